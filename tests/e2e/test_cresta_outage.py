"""Cresta goes away in the middle of the calls: `cresta-pipeline demo --cresta-outage`.

The Cresta emulator refuses and drops every stream from OUTAGE_START_S into the calls for
OUTAGE_S. Expected: the calls and the job go on; no chunk is SENT while Cresta is away;
delivery resumes within 3 s of its return; the audit trail holds every chunk once, its
audio sample for sample, with what Cresta missed marked DROPPED or FAILED.

"Resumes within 3 s" is a property of the pipeline, read from the run's own records:
the first audio the emulator received after the window, minus the window's end, on the
same wall clock. It does not time this test. What bounds it is the delivery policy: the
first attempt after the window comes at most one longest backoff or one breaker cooldown
(2 s each) after its end, then one WebSocket connect, with chunks ready in the contact's
buffer. The second left over is the margin for a loaded two-core machine, where the
job, the connector workers, the emulators and the simulated calls share the cores.

The outage (4 s) outlasts the per-contact buffer (5 s of audio, 2.5 s of a two-track
call), so some audio is DROPPED; the calls run on for 4 s after it, so every contact has
audio to resume with.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.dataset as ds
import pytest

from demo_cli import CALLS, CHUNK_MS, run_demo_cli
from pipeline.audio import read_wav

pytestmark = pytest.mark.e2e

CALL_SECONDS = 10
OUTAGE_START_S = 2.0
OUTAGE_S = 4.0
#: How soon delivery must resume once Cresta is back.
RESUME_WITHIN_S = 3.0


@pytest.fixture(scope="module")
def outage_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("outage")
    summary = run_demo_cli(
        out, "--call-seconds", str(CALL_SECONDS), "--cresta-outage", f"{OUTAGE_START_S:g}:{OUTAGE_S:g}"
    )
    return out, summary


def test_the_summary_shows_the_outage_and_nothing_sent_while_cresta_was_away(outage_run):
    _, summary = outage_run
    assert summary["cresta_outage_s"] == [OUTAGE_START_S, OUTAGE_S]
    assert summary["chunks_sent_during_outage"] == 0
    assert summary["chunks_not_sent"] > 0
    assert summary["cresta_resumed_after_s"] is not None
    assert 0 <= summary["cresta_resumed_after_s"] <= RESUME_WITHIN_S


def test_the_audit_trail_holds_every_chunk_once_with_the_source_audio(outage_run):
    out, summary = outage_run
    assert summary["calls"] == CALLS
    assert summary["missing"] == summary["duplicated"] == 0
    assert summary["audit_audio_mismatches"] == summary["audit_samples_missing"] == 0
    full_chunks = CALLS * 2 * (CALL_SECONDS * 1000 // CHUNK_MS)
    assert summary["chunks"] == summary["audit_rows"] == full_chunks + CALLS * 2
    rows = ds.dataset(str(out / "audit"), format="parquet", partitioning="hive").to_table().to_pylist()
    not_sent = [r for r in rows if r["sample_count"] and r["delivery_status"] != "SENT"]
    assert len(not_sent) == summary["chunks_not_sent"]
    assert {r["delivery_status"] for r in not_sent} <= {"DROPPED", "FAILED"}
    for contact_id in summary["contacts"]:
        for track in ("customer", "agent"):
            chunks = sorted(
                (r for r in rows if r["contact_id"] == contact_id and r["track"] == track), key=lambda r: r["seq"]
            )
            assert [r["seq"] for r in chunks] == list(range(len(chunks)))
            source = read_wav(out / "source" / contact_id / f"{track}.wav").data
            assert b"".join(r["pcm"] for r in chunks) == source
            # The calls went on: the last second of each track reached Cresta after it came back.
            assert {r["delivery_status"] for r in chunks[-11:-1]} == {"SENT"}


def test_cresta_got_the_source_audio_in_order_less_what_it_missed(outage_run):
    _, summary = outage_run
    assert summary["cresta_audio_from_source"] == CALLS
    assert summary["cresta_audio_exact"] == summary["cresta_audio_complete"] == 0
    assert summary["cresta_protocol_violations"] == 0
    # Every chunk not SENT is audio Cresta never got.
    assert summary["cresta_missing_ms"] >= summary["chunks_not_sent"] * CHUNK_MS
    assert summary["cresta_chunks_received"] + summary["chunks_not_sent"] <= CALLS * 2 * CALL_SECONDS * 1000 // CHUNK_MS


def test_a_job_restart_while_cresta_is_away_submits_the_waiting_chunks_again_and_writes_each_row_once(tmp_path):
    """The job fails in the middle of the outage, when every contact has chunks waiting in
    its delivery state for Cresta; Flink restores the last checkpoint, taken during the
    outage (checkpoints come every 2 s, so at least 1 s into it). The restored job must
    submit those chunks again (the service that took them died with the failed task) and
    write each chunk's row once."""
    call_seconds, outage_start_s, outage_s, fail_after_s = 12, 2.0, 6.0, 5
    summary = run_demo_cli(
        tmp_path, "--call-seconds", str(call_seconds),
        "--cresta-outage", f"{outage_start_s:g}:{outage_s:g}", "--fail-job-after-seconds", str(fail_after_s),
    )
    failed_at_s = summary["job_failed_at_s"]
    # A second before Cresta is back at the latest, so the failed task is gone by then.
    assert fail_after_s <= failed_at_s <= outage_start_s + outage_s - 1, "the failure must strike while Cresta is away"
    assert summary["missing"] == summary["duplicated"] == 0
    assert summary["audit_audio_mismatches"] == summary["audit_samples_missing"] == 0
    assert summary["chunks_sent_during_outage"] == 0
    assert summary["cresta_audio_from_source"] == CALLS
    assert summary["cresta_protocol_violations"] == 0

    rows = ds.dataset(str(tmp_path / "audit"), format="parquet", partitioning="hive").to_table().to_pylist()
    calls_started_ms = min(epoch_ms(r["chunk_start"]) for r in rows)
    failed_at_ms = calls_started_ms + failed_at_s * 1000
    back_at_ms = calls_started_ms + (outage_start_s + outage_s) * 1000
    # Rows SENT after Cresta came back for chunks assembled before the failure: the task
    # that assembled them was gone by then, so the restored task submitted them from state.
    resubmitted = [
        r for r in rows
        if r["delivery_status"] == "SENT"
        and epoch_ms(r["delivered_at"]) >= back_at_ms
        and epoch_ms(r["delivered_at"]) - r["delivery_latency_ms"] < failed_at_ms
    ]
    assert {r["contact_id"] for r in resubmitted} == set(summary["contacts"])


def epoch_ms(timestamp: datetime) -> float:
    """An audit timestamp (naive UTC, as the job writes it) in epoch milliseconds."""
    return timestamp.replace(tzinfo=timezone.utc).timestamp() * 1000
