"""Bad input goes to the error output with a reason; the job and other contacts go on.

Records are put straight on the Kinesis streams (moto) and read by the real job on the
minicluster, so the decoders, the keyed assembler and both sinks are exercised.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from connectors.audit_trail import read_audit
from emulators.demo import send_warm_up_event, start_job
from emulators.stack import LocalStack, StackSettings
from pipeline.audit_analysis import complete_tracks
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


def test_bad_records_and_an_incomplete_contact_reach_the_error_output(tmp_path):
    with LocalStack(StackSettings(kvs_pool_size=1)) as stack:
        stack.apply_environment()
        job = start_job(
            stack,
            stack.process_environment(),
            tmp_path,
            # No grace: a contact's state is cleared as soon as it closes, so audio sent
            # after its audit rows are in comes after the clearing.
            **{
                "audit.path": (tmp_path / "audit").as_uri(),
                "assembler.reorder_window_ms": 0,
                "assembler.state_grace_ms": 0,
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
            put(frames, frame("short", Track.CUSTOMER, 0, fill=9), "short")
            put(frames, AudioEnd("good", "1000", START_MS + 200, 2 * SAMPLES, 2 * SAMPLES, 2, 2).encode(), "good")
            put(frames, AudioEnd("short", "1000", START_MS + 100, 2 * SAMPLES, 0, 2, 0).encode(), "short")
            put(frames, frame("late", Track.CUSTOMER, 0, fill=5), "late")
            put(frames, AudioEnd("late", "1000", START_MS + 100, SAMPLES, 0, 1, 0).encode(), "late")

            def wait_until(done) -> None:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    errors = read_errors(tmp_path / "errors")
                    audit = read_audit(tmp_path / "audit")
                    if done(errors, complete_tracks(audit) if audit is not None else set()):
                        return
                    assert job.running(), (tmp_path / "job.log").read_text()[-3000:]
                    time.sleep(1)
                pytest.fail("the job's output did not arrive in time")

            wait_until(
                lambda errors, complete: len(errors) >= 3
                and {("good", "customer"), ("good", "agent"), ("late", "customer")} <= complete
            )
            # A resumed connector worker replays the closed contact's audio, and more.
            put(frames, frame("late", Track.CUSTOMER, 0, fill=5), "late")
            put(frames, frame("late", Track.CUSTOMER, 1, fill=6), "late")
            wait_until(lambda errors, _: any(e["reason"] == "audio_after_expiry" for e in errors))
            errors = read_errors(tmp_path / "errors")
        finally:
            job.stop()

    by_reason = {error["reason"]: error for error in errors}
    assert by_reason["bad_magic"]["source"] == frames
    assert base64.b64decode(by_reason["bad_magic"]["raw_base64"]) == GARBAGE
    assert by_reason["malformed_event"]["source"] == events
    mismatch = by_reason["completeness_mismatch"]
    assert mismatch["contact_id"] == "short" and "1600" in mismatch["message"]
    good = sorted(
        (r for r in read_audit(tmp_path / "audit").to_pylist() if r["contact_id"] == "good"),
        key=lambda r: (r["track"], r["seq"]),
    )
    assert [(r["track"], r["seq"], r["sample_count"]) for r in good] == [
        ("agent", 0, SAMPLES), ("agent", 1, SAMPLES), ("agent", 2, 0),
        ("customer", 0, SAMPLES), ("customer", 1, SAMPLES), ("customer", 2, 0),
    ]
    late = sorted(
        (r for r in read_audit(tmp_path / "audit").to_pylist() if r["contact_id"] == "late"),
        key=lambda r: (r["track"], r["seq"]),
    )
    assert [(r["track"], r["seq"], r["sample_count"]) for r in late] == [("customer", 0, SAMPLES), ("customer", 1, 0)]
    (after_expiry,) = [e for e in errors if e["reason"] == "audio_after_expiry"]
    assert after_expiry["contact_id"] == "late" and "assembler.state_grace_ms" in after_expiry["message"]
