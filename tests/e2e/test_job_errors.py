"""Bad input goes to the error output with a reason; the job and other contacts go on;
and what happened reaches Flink as the job's metrics.

Records are put straight on the Kinesis streams (moto) and read by the real job on the
minicluster, so the decoders, the keyed assembler and both sinks are exercised. While the
job runs, its metrics are read back from the minicluster's REST API (``flink.rest_port``):
what Flink holds is what a metrics reporter, such as Managed Flink's CloudWatch export,
would publish.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import pytest

from connectors.audit_trail import read_audit
from emulators.demo import send_warm_up_event, start_job
from emulators.stack import LocalStack, StackSettings
from jobs.flink_rest import FlinkRest, pick_rest_port
from pipeline.audit_analysis import complete_tracks
from pipeline.metrics import JOB_METRICS, METRIC_GROUP
from pipeline.records import AudioEnd, AudioFrame, ContactEvent, EventType, Track

pytestmark = pytest.mark.e2e

START_MS = 1_795_000_000_000
SAMPLES = 800  # 100 ms at 8 kHz: one whole chunk per frame
#: Longer than an AudioFrame header, so it fails on its magic rather than its length.
GARBAGE = b"this is not an audio frame, whatever it claims"


def frame(contact_id: str, track: Track, index: int, fill: int) -> bytes:
    pcm = bytes([fill, 0]) * SAMPLES
    return AudioFrame(contact_id, track, "1000", index, START_MS + 100 * index, 8000, pcm).encode()


def started(contact_id: str) -> bytes:
    return ContactEvent(EventType.STARTED, contact_id, START_MS, attributes={"Language": "en-US"}).encode()


def read_errors(root) -> list[dict]:
    return [
        json.loads(line)
        for path in root.rglob("errors-*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    ]


@dataclass
class JobRun:
    """What one run of the job on bad and unusual input left behind."""

    errors: list[dict]
    audit: list[dict]
    #: The job's metrics as Flink's REST API served them before the job stopped.
    metrics: dict[str, list[float]]
    frames_stream: str
    events_stream: str
    frames_put: int
    replays_put: int
    #: What the minicluster kept in the job's working folder while it ran, and whether
    #: that folder outlived the job.
    working_files: list[str]
    working_dir_left: bool


@pytest.fixture(scope="module")
def job_run(tmp_path_factory) -> JobRun:
    """Bad records, an incomplete contact, a replayed frame, a contact without STARTED and
    audio after a contact's state was cleared, through one job; its metrics are read back
    once everything is in the audit trail and the error output."""
    out = tmp_path_factory.mktemp("job-errors")
    with LocalStack(StackSettings(kvs_pool_size=1)) as stack:
        stack.apply_environment()
        rest_port = pick_rest_port()
        job = start_job(
            stack,
            stack.process_environment(),
            out,
            **{
                "audit.path": (out / "audit").as_uri(),
                "assembler.reorder_window_ms": 0,
                # No grace: a contact's state is cleared as soon as it closes, so audio
                # sent after its audit rows are in comes after the clearing.
                "assembler.state_grace_ms": 0,
                "flink.rest_port": rest_port,
            },
        )
        try:
            job.wait_ready(240, lambda: send_warm_up_event(stack))
            kinesis = stack.client("kinesis")
            frames, events = stack.settings.audio_frames_stream, stack.settings.contact_events_stream

            def put(stream: str, data: bytes, key: str) -> None:
                kinesis.put_record(StreamName=stream, Data=data, PartitionKey=key)

            put(frames, GARBAGE, "garbage")
            put(events, b"{not json", "garbage")
            for contact_id in ("good", "short", "late"):
                put(events, started(contact_id), contact_id)
            for index in range(2):
                for track in Track:
                    put(frames, frame("good", track, index, fill=index + 1), "good")
            # A replay of a frame already assembled (as after a connector restart).
            put(frames, frame("good", Track.CUSTOMER, 0, fill=1), "good")
            put(frames, frame("short", Track.CUSTOMER, 0, fill=9), "short")
            # Audio of a contact whose STARTED never comes: it flows without attributes.
            put(frames, frame("early", Track.CUSTOMER, 0, fill=5), "early")
            put(frames, frame("late", Track.CUSTOMER, 0, fill=5), "late")
            put(frames, AudioEnd("good", "1000", START_MS + 200, 2 * SAMPLES, 2 * SAMPLES, 2, 2).encode(), "good")
            put(frames, AudioEnd("short", "1000", START_MS + 100, 2 * SAMPLES, 0, 2, 0).encode(), "short")
            put(frames, AudioEnd("early", "1000", START_MS + 100, SAMPLES, 0, 1, 0).encode(), "early")
            put(frames, AudioEnd("late", "1000", START_MS + 100, SAMPLES, 0, 1, 0).encode(), "late")

            with FlinkRest(f"http://127.0.0.1:{rest_port}") as rest:

                def wait_until(done: Callable[[list[dict], list[dict], dict], bool]) -> tuple:
                    deadline = time.monotonic() + 180
                    while time.monotonic() < deadline:
                        errors = read_errors(out / "errors")
                        audit = read_audit(out / "audit")
                        rows = audit.to_pylist() if audit is not None else []
                        metrics = rest.job_metrics(METRIC_GROUP)
                        if done(errors, rows, metrics):
                            return errors, rows, metrics
                        assert job.running(), (out / "job.log").read_text()[-3000:]
                        time.sleep(1)
                    pytest.fail(
                        f"the job's output did not arrive in time: errors {Counter(e['reason'] for e in errors)}, "
                        f"complete tracks {sorted(complete_tracks(audit)) if audit is not None else []}, "
                        f"{len(rows)} audit rows, metrics {metrics}"
                    )

                wanted = {("good", "customer"), ("good", "agent"), ("early", "customer"), ("late", "customer")}
                wait_until(
                    lambda errors, rows, _: len(errors) >= 3
                    and wanted <= complete_tracks(read_audit(out / "audit"))
                )
                # A resumed connector worker replays the closed contact's audio, and more.
                put(frames, frame("late", Track.CUSTOMER, 0, fill=5), "late")
                put(frames, frame("late", Track.CUSTOMER, 1, fill=6), "late")
                frames_put, replays_put = 10, 1
                # Python functions report metrics at the end of a bundle, and the REST API
                # refreshes them at most once a second: wait until they caught up.
                errors, rows, metrics = wait_until(
                    lambda errors, rows, metrics: any(e["reason"] == "audio_after_expiry" for e in errors)
                    and sum(metrics.get("chunks_out", [])) == len(rows)
                    and sum(metrics.get("frames_in", [])) == frames_put
                    and delivery_meters(metrics) == {f"status.{r['delivery_status']}.deliveries" for r in rows}
                    and error_counters(metrics) == {f"reason.{e['reason']}.errors" for e in errors}
                )
            working_files = sorted(path.name for path in job.working_dir.iterdir())
        finally:
            job.stop()
    return JobRun(
        errors, rows, metrics, frames, events, frames_put, replays_put, working_files, job.working_dir.exists()
    )


def delivery_meters(metrics: dict[str, list[float]]) -> set[str]:
    return {name for name in metrics if name.startswith("status.")}


def error_counters(metrics: dict[str, list[float]]) -> set[str]:
    return {name for name in metrics if name.startswith("reason.")}


def contact_rows(job_run: JobRun, contact_id: str) -> list[tuple[str, int, int]]:
    rows = sorted((r for r in job_run.audit if r["contact_id"] == contact_id), key=lambda r: (r["track"], r["seq"]))
    return [(r["track"], r["seq"], r["sample_count"]) for r in rows]


def test_bad_records_and_an_incomplete_contact_reach_the_error_output(job_run):
    frames, events = job_run.frames_stream, job_run.events_stream
    by_reason = {error["reason"]: error for error in job_run.errors}
    assert by_reason["bad_magic"]["source"] == frames
    assert base64.b64decode(by_reason["bad_magic"]["raw_base64"]) == GARBAGE
    assert by_reason["malformed_event"]["source"] == events
    mismatch = by_reason["completeness_mismatch"]
    assert mismatch["contact_id"] == "short" and "1600" in mismatch["message"]
    assert contact_rows(job_run, "good") == [
        ("agent", 0, SAMPLES), ("agent", 1, SAMPLES), ("agent", 2, 0),
        ("customer", 0, SAMPLES), ("customer", 1, SAMPLES), ("customer", 2, 0),
    ]


def test_audio_after_a_contacts_state_is_cleared_is_reported_and_never_starts_it_again(job_run):
    assert contact_rows(job_run, "late") == [("customer", 0, SAMPLES), ("customer", 1, 0)]
    (after_expiry,) = [e for e in job_run.errors if e["reason"] == "audio_after_expiry"]
    assert after_expiry["contact_id"] == "late" and "assembler.state_grace_ms" in after_expiry["message"]


def test_the_minicluster_keeps_its_working_files_in_the_jobs_folder_and_they_go_with_it(job_run):
    assert any(name.startswith("minicluster_") for name in job_run.working_files), job_run.working_files
    assert not job_run.working_dir_left


def test_the_jobs_metrics_reach_flink_with_what_happened(job_run):
    metrics = job_run.metrics
    total = {name: sum(values) for name, values in metrics.items()}
    # Every metric Flink holds is the catalogue's, split only by the catalogue's dimension.
    catalogue = {spec.name: spec for spec in JOB_METRICS}
    for name in metrics:
        *split, leaf = name.split(".")
        assert leaf in catalogue, name
        assert split[:1] == ([catalogue[leaf].dimension] if catalogue[leaf].dimension else []), name
    assert total["frames_in"] == job_run.frames_put
    assert total["duplicates_dropped"] == job_run.replays_put
    assert total["chunks_out"] == len(job_run.audit)
    assert total["early_audio_chunks"] == sum(r["attributes_missing"] for r in job_run.audit) > 0
    reasons = Counter(error["reason"] for error in job_run.errors)
    assert {name: count for name, count in total.items() if name.startswith("reason.")} == {
        f"reason.{reason}.errors": count for reason, count in reasons.items()
    }
    # Deliveries are a meter (a rate); each status in the audit trail has one.
    statuses = {r["delivery_status"] for r in job_run.audit}
    assert statuses == {"SENT", "SKIPPED"}
    assert delivery_meters(metrics) == {f"status.{s}.deliveries" for s in statuses}
    for quantity in ("ingest_lag_ms", "delivery_latency_ms"):
        assert 0 <= max(metrics[f"{quantity}_p50"]) <= max(metrics[f"{quantity}_p99"])
