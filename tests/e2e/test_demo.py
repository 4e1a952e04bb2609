"""The walking skeleton end to end: `cresta-pipeline demo` on the real minicluster.

Runs the CLI as a user would (its own process: the local stack, the PyFlink job with the
Maven-built connector jar, a KVS connector worker, emulated calls) and checks the files
it promises against the audio the simulator wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from demo_cli import CALL_SECONDS, CALLS, CHUNK_MS, run_demo_cli
from pipeline.audio import WAVE_FORMAT_MULAW, WAVE_FORMAT_PCM, pcm16_to_mulaw, read_wav

pytestmark = pytest.mark.e2e

def test_summary_reports_every_chunk_once(demo_run):
    summary = demo_run[1]
    full_chunks = CALLS * 2 * (CALL_SECONDS * 1000 // CHUNK_MS)
    # Each track ends with a final chunk holding the remainder: empty here.
    assert summary["chunks"] == summary["audit_rows"] == full_chunks + CALLS * 2
    assert summary["cresta_chunks_received"] == full_chunks
    assert_every_sample_once(summary)


def assert_every_sample_once(summary: dict) -> None:
    assert summary["calls"] == CALLS
    assert summary["missing"] == 0
    assert summary["duplicated"] == 0
    assert summary["audit_audio_mismatches"] == 0
    assert summary["audit_samples_missing"] == 0
    assert summary["cresta_audio_exact"] == CALLS
    assert summary["cresta_protocol_violations"] == 0
    assert summary["frames_read"] > 0
    assert summary["latency_ms_p50"] is not None and summary["latency_ms_p99"] >= summary["latency_ms_p50"]


def test_summary_json_file_matches_stdout(demo_run):
    out, summary = demo_run
    assert json.loads((out / "summary.json").read_text()) == summary


def test_the_job_log_shows_the_settings_without_the_media_token(demo_run):
    out, _ = demo_run
    started = [line for line in (out / "logs" / "job.log").read_text().splitlines() if " with {" in line]
    assert started, "the job did not log its settings"
    settings = json.loads(started[0].split(" with ", 1)[1])
    # The demo gives the job a random token; the log only says one is set.
    assert settings["cresta.media_token"] == "<set>"


def test_audit_trail_holds_the_source_audio_exactly(demo_run):
    assert_audit_holds_source_audio(*demo_run, whole_chunks=True)


def assert_audit_holds_source_audio(out: Path, summary: dict, whole_chunks: bool) -> None:
    """Sample-exact audit audio; ``whole_chunks``: no idle flush cut a chunk short."""
    partitions = [p.relative_to(out / "audit") for p in (out / "audit").glob("dt=*/hour=*")]
    assert partitions, "no dt=…/hour=… partitions"
    table = ds.dataset(str(out / "audit"), format="parquet", partitioning="hive").to_table()
    rows = table.to_pylist()
    for contact_id in summary["contacts"]:
        for track in ("customer", "agent"):
            source = read_wav(out / "source" / contact_id / f"{track}.wav")
            assert (source.format_tag, source.sample_rate, source.channels, source.bits_per_sample) == (
                WAVE_FORMAT_PCM, 8000, 1, 16,
            )
            chunks = sorted(
                (r for r in rows if r["contact_id"] == contact_id and r["track"] == track),
                key=lambda r: r["seq"],
            )
            assert [r["seq"] for r in chunks] == list(range(len(chunks)))
            assert b"".join(r["pcm"] for r in chunks) == source.data
            if whole_chunks:
                assert all(r["sample_count"] == 800 for r in chunks[:-1])
                assert chunks[-1]["sample_count"] == 0 and chunks[-1]["delivery_status"] == "SKIPPED"
            assert all(0 < r["sample_count"] <= 800 for r in chunks[:-1])
            assert chunks[-1]["final"] and not any(r["final"] for r in chunks[:-1])
            assert all(r["pcm_sha256"] == hashlib.sha256(r["pcm"]).hexdigest() for r in chunks)
            assert all(r["delivery_status"] == "SENT" for r in chunks if r["sample_count"])
            assert {r["attributes_missing"] for r in chunks} == {False}
            # Only the allowlisted attribute: CustomerTier stays out of Cresta and the audit.
            assert {json.loads(r["attributes"])["Language"] for r in chunks} == {"en-US"}
            assert not any("CustomerTier" in json.loads(r["attributes"]) for r in chunks)


def test_cresta_received_the_mulaw_of_the_source(demo_run):
    assert_cresta_received_source_audio(*demo_run)


def assert_cresta_received_source_audio(out: Path, summary: dict) -> None:
    for contact_id in summary["contacts"]:
        customer = read_wav(out / "source" / contact_id / "customer.wav").data
        agent = read_wav(out / "source" / contact_id / "agent.wav").data
        assert customer != agent
        for track, source in (("customer", customer), ("agent", agent)):
            received = read_wav(out / "cresta" / contact_id / f"{track}.wav")
            assert (received.format_tag, received.sample_rate, received.channels) == (WAVE_FORMAT_MULAW, 8000, 1)
            assert received.data == pcm16_to_mulaw(source)


def test_a_killed_connector_worker_loses_and_duplicates_nothing(tmp_path):
    # Worker 0 dies mid-call with SIGKILL; the other worker gets its contacts from the
    # queue and resumes them from their DynamoDB checkpoints.
    # Long enough calls that worker 0 has checkpointed fragments when it dies.
    call_seconds = 8
    summary = run_demo_cli(
        tmp_path, "--call-seconds", str(call_seconds), "--connector-workers", "2", "--kill-connector-after-seconds", "4"
    )
    assert summary["connector_killed_at_s"] == 4
    # The survivor took over worker 0's work items (redelivered: second receive); it
    # resumes from a checkpoint when worker 0 had written one, else from the start.
    survivor_log = (tmp_path / "logs" / "connector-1.log").read_text()
    for contact_id in summary["contacts"]:
        assert f"contact received contact_id={contact_id} receive_count=2" in survivor_log
    assert_every_sample_once(summary)
    assert_audit_holds_source_audio(tmp_path, summary, whole_chunks=False)
    assert_cresta_received_source_audio(tmp_path, summary)


def test_audit_trail_on_s3_through_the_s3_file_system_plugin(tmp_path):
    # The job writes to moto's S3 through flink-s3-fs-hadoop; the demo reads the trail
    # back from there (pyarrow's S3 client) and keeps a copy of the objects under audit/.
    uri = "s3://audit-trail/cresta/audit"
    summary = run_demo_cli(tmp_path, "--audit-uri", uri)
    assert summary["audit_uri"] == uri
    full_chunks = CALLS * 2 * (CALL_SECONDS * 1000 // CHUNK_MS)
    assert summary["chunks"] == summary["audit_rows"] == full_chunks + CALLS * 2
    assert_every_sample_once(summary)
    assert_audit_holds_source_audio(tmp_path, summary, whole_chunks=True)
    copied = ds.dataset(str(tmp_path / "audit"), format="parquet", partitioning="hive").count_rows()
    assert copied == summary["audit_rows"]


def test_a_failed_job_task_restarts_from_its_checkpoint_without_losing_or_duplicating(tmp_path):
    # One task of the job fails mid-call (once every call has audit rows committed);
    # Flink restarts the job from its last checkpoint. The audit trail still holds every
    # chunk once; Cresta may get the chunks sent after that checkpoint twice, each
    # stream in order (at-least-once delivery across restarts).
    call_seconds = 8
    summary = run_demo_cli(tmp_path, "--call-seconds", str(call_seconds), "--fail-job-after-seconds", "4")
    assert summary["job_failed_at_s"] >= 4
    assert not (tmp_path / "logs" / "job.fail-once").exists()
    assert summary["calls"] == CALLS
    assert summary["missing"] == summary["duplicated"] == 0
    assert summary["audit_audio_mismatches"] == summary["audit_samples_missing"] == 0
    assert summary["cresta_audio_complete"] == CALLS
    assert summary["cresta_protocol_violations"] == 0
    assert_audit_holds_source_audio(tmp_path, summary, whole_chunks=False)
