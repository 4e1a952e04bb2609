"""What `cresta-pipeline demo` shows while it runs and when it ends: the live figures
from what it observes (the simulator's fragment writes, what the Cresta emulator
received), the progress line, where that line goes, the summary table, and the
README's account of summary.json."""

from __future__ import annotations

import hashlib
import io
import random
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from emulators.connect.simulator import FragmentWrite, SimulatedCall
from emulators.cresta.server import CallRecord
from emulators.demo import ProgressOutput
from emulators.demo_report import DemoReport, LiveDelivery, LiveFigures, build_report, progress_line
from pipeline.audio import pcm16_to_mulaw
from pipeline.media_streams import FRAME_BYTES, TWILIO_TRACK_OF
from pipeline.records import Track

README = Path(__file__).resolve().parents[2] / "README.md"
T0 = 1_800_000_000.0
SAMPLES_PER_S = 8000
CHUNK_MS = 100
CHUNK_SAMPLES = 800
FRAMES_PER_CHUNK = CHUNK_SAMPLES // FRAME_BYTES


def new_call(seed: int, seconds: int = 2) -> SimulatedCall:
    """A call whose tracks are PCM noise: each 20 ms μ-law frame of it is unique."""
    rng = random.Random(seed)
    return SimulatedCall(
        contact_id=f"contact-{seed}",
        stream_arn="arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-live-media-0/1",
        instance_id="instance",
        seconds=seconds,
        seed=seed,
        attributes={},
        agent_id="agent",
        pcm={track: rng.randbytes(2 * SAMPLES_PER_S * seconds) for track in Track},
    )


def write_fragment(call: SimulatedCall, second: int) -> None:
    """The simulator wrote the call's ``second``-th 1 s fragment into KVS at T0 + second + 1."""
    call.fragments.append(FragmentWrite(second * SAMPLES_PER_S, SAMPLES_PER_S, T0 + second + 1, str(second)))


def at_cresta(call: SimulatedCall, frames: dict[int, float]) -> CallRecord:
    """Cresta received these 20 ms frames of both tracks (frame index → receive time), in order."""
    tracks, times = {}, {}
    for track in Track:
        mulaw = pcm16_to_mulaw(call.pcm[track])
        tracks[TWILIO_TRACK_OF[track]] = b"".join(
            mulaw[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in sorted(frames)
        )
        times[TWILIO_TRACK_OF[track]] = [frames[i] for i in sorted(frames)]
    return CallRecord(call.contact_id, {}, tracks, times, [], False)


def frames_received(first: int, stop: int, at: float, step: float = 0.002) -> dict[int, float]:
    return {i: at + step * i for i in range(first, stop)}


def test_a_chunk_counts_once_cresta_holds_its_last_sample_with_the_latency_from_its_fragment_s_write():
    call, waiting = new_call(1), new_call(2)
    write_fragment(call, 0)
    # Half a second of each track at Cresta, frame i at T0 + 1.1 + 2 ms × i; the fragment
    # holding it was written at T0 + 1.
    cresta = {call.contact_id: at_cresta(call, frames_received(0, 25, T0 + 1.1))}
    figures = LiveDelivery([call, waiting], CHUNK_MS, started_at=T0).observe(cresta, now=T0 + 1.5)
    # Chunk j (1…5) ends with frame 5j − 1: 100 ms + 2 ms × (5j − 1) after its write.
    assert figures == LiveFigures(
        elapsed_s=1.5,
        calls=2,
        calls_playing=2,
        chunks_at_cresta=10,
        window_s=5.0,
        latency_ms_p50=pytest.approx(128.0),
        latency_ms_p99=pytest.approx(148.0),
    )


def test_each_observation_counts_only_new_chunks_and_passes_over_audio_cresta_skipped():
    call = new_call(3)
    write_fragment(call, 0)
    delivery = LiveDelivery([call], CHUNK_MS, started_at=T0)
    # Chunks 1–2 arrived, then Cresta missed chunks 3–4 (an outage), then chunk 5 came.
    frames = {**frames_received(0, 10, T0 + 1.1), **frames_received(20, 25, T0 + 1.1)}
    assert delivery.observe({call.contact_id: at_cresta(call, frames)}, now=T0 + 1.5).chunks_at_cresta == 2 * 3
    write_fragment(call, 1)
    frames |= frames_received(25, 100, T0 + 1.1)
    second = delivery.observe({call.contact_id: at_cresta(call, frames)}, now=T0 + 2.5)
    # Chunks 6–20 came; the call's audio is all written.
    assert second.chunks_at_cresta == 2 * (3 + 15)
    assert second.calls_playing == 0


def test_latency_covers_only_the_chunks_received_within_the_window():
    call = new_call(4)
    write_fragment(call, 0)
    delivery = LiveDelivery([call], CHUNK_MS, started_at=T0, window_s=5.0)
    cresta = {call.contact_id: at_cresta(call, frames_received(0, 25, T0 + 1.1))}
    assert delivery.observe(cresta, now=T0 + 3).latency_ms_p50 is not None
    later = delivery.observe(cresta, now=T0 + 10)
    assert later.chunks_at_cresta == 10
    assert later.latency_ms_p50 is None and later.latency_ms_p99 is None
    assert progress_line(later).endswith("| last 5 s p50/p99 none")


def test_once_everything_arrived_the_live_figures_agree_with_the_summary():
    calls = [new_call(5), new_call(6)]
    for call in calls:
        write_fragment(call, 0)
        write_fragment(call, 1)
    cresta = {
        call.contact_id: at_cresta(call, frames_received(0, 100, T0 + 1.05 + 0.01 * n, step=0.011))
        for n, call in enumerate(calls)
    }
    live = LiveDelivery(calls, CHUNK_MS, started_at=T0, window_s=60).observe(cresta, now=T0 + 3)
    report = build_report(
        calls=calls,
        audit=audit_of(calls),
        cresta_calls=cresta,
        chunk_ms=CHUNK_MS,
        frames_read=0,
        audit_uri="file:///audit",
        connector_workers=1,
    )
    summary = report.summary
    assert live.chunks_at_cresta == summary["cresta_chunks_received"] == 2 * 2 * 20
    # Each chunk's latency, by where its audio ends in the call.
    assert sorted(at for at, _ in report.chunk_latencies) == sorted([n / 10 for n in range(1, 21)] * 4)
    assert summary["latency_ms_p99"] == pytest.approx(np.percentile([ms for _, ms in report.chunk_latencies], 99))
    assert live.latency_ms_p50 == pytest.approx(summary["latency_ms_p50"])
    assert live.latency_ms_p99 == pytest.approx(summary["latency_ms_p99"])


def audit_of(calls: list[SimulatedCall]) -> pa.Table:
    """The audit rows of whole chunks and an empty final chunk per track, all SENT."""
    rows = []
    for call in calls:
        for track in Track:
            samples = len(call.pcm[track]) // 2
            for seq, start in enumerate([*range(0, samples, CHUNK_SAMPLES), samples]):
                pcm = call.pcm[track][2 * start : 2 * min(start + CHUNK_SAMPLES, samples)]
                rows.append(
                    {
                        "contact_id": call.contact_id,
                        "track": track.label,
                        "seq": seq,
                        "sample_count": len(pcm) // 2,
                        "final": start == samples,
                        "pcm_sha256": hashlib.sha256(pcm).hexdigest(),
                        "delivery_status": "SENT" if pcm else "SKIPPED",
                        "delivered_at": datetime(2027, 1, 15, 8, 0),
                    }
                )
    return pa.Table.from_pylist(rows)


def test_fragment_writes_behind_real_time_are_measured_against_each_call_s_most_punctual_fragment():
    calls = [new_call(8, seconds=3), new_call(9)]
    # Call 8's fragments were written 1.2 s, 2.5 s and 3.3 s after the call began: the
    # second 300 ms later than the first, the third 100 ms; call 9's on time, however
    # late it began.
    for second, written_at in enumerate([T0 + 1.2, T0 + 2.5, T0 + 3.3]):
        calls[0].fragments.append(FragmentWrite(second * SAMPLES_PER_S, SAMPLES_PER_S, written_at, str(second)))
    for second in range(2):
        calls[1].fragments.append(FragmentWrite(second * SAMPLES_PER_S, SAMPLES_PER_S, T0 + 7 + second, str(second)))
    summary = build_report(
        calls=calls, audit=None, cresta_calls={}, chunk_ms=CHUNK_MS, frames_read=0,
        audit_uri="file:///audit", connector_workers=1,
    ).summary
    assert summary["fragment_writes_late_ms_p99"] == pytest.approx(float(np.percentile([0, 300, 100, 0, 0], 99)))


def test_the_progress_line_says_calls_chunks_and_recent_latency():
    figures = LiveFigures(
        elapsed_s=12.4, calls=200, calls_playing=150, chunks_at_cresta=12345,
        window_s=5.0, latency_ms_p50=212.4, latency_ms_p99=268.6,
    )
    assert progress_line(figures) == (
        "  12 s | calls playing 150/200 | 12,345 chunks at Cresta | last 5 s p50/p99 212/269 ms"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_the_live_line_is_printed_every_few_seconds_and_the_last_one_always():
    stream, clock = io.StringIO(), Clock()
    output = ProgressOutput(stream, terminal=False, clock=clock)
    for second in range(12):
        clock.now = second
        output.live(f"at {second}")
    output.message("calls ended")
    output.live("at 12", last=True)
    assert stream.getvalue().splitlines() == ["at 0", "at 5", "at 10", "calls ended", "at 12"]
    assert "\r" not in stream.getvalue()


def test_on_a_terminal_the_live_line_is_rewritten_in_place_and_gives_way_to_messages():
    stream = io.StringIO()
    output = ProgressOutput(stream, terminal=True)
    output.live("chunks 1,000")
    output.live("chunks 2")
    output.message("a worker was killed")
    output.live("chunks 3", last=True)
    assert stream.getvalue() == (
        "\rchunks 1,000"
        "\rchunks 2    "
        "\r        \r" "a worker was killed\n"
        "\rchunks 3\n"
    )


def test_quiet_says_nothing():
    output = ProgressOutput(None, terminal=False)
    output.message("starting")
    output.live("chunks", last=True)
    assert output.silent


def summary_with(**changes) -> dict:
    call = new_call(7)
    write_fragment(call, 0)
    write_fragment(call, 1)
    cresta = {call.contact_id: at_cresta(call, frames_received(0, 100, T0 + 1.1, step=0.01))}
    summary = build_report(
        calls=[call], audit=audit_of([call]), cresta_calls=cresta, chunk_ms=CHUNK_MS, frames_read=64,
        audit_uri="file:///audit", connector_workers=2,
    ).summary
    return {**summary, **changes}


def test_the_summary_table_shows_the_key_figures_and_the_verdict():
    table = DemoReport(summary_with()).table()
    rows = {line.strip().rsplit("  ", 1)[0].strip(): line.rsplit("  ", 1)[-1].strip() for line in table.splitlines()}
    assert rows["calls"] == "1"
    assert rows["chunks"] == "42"
    assert (rows["missing"], rows["duplicated"]) == ("0", "0")
    assert rows["audio exact (contacts)"] == "1/1"
    assert re.fullmatch(r"\d+ ms", rows["p50"]) and re.fullmatch(r"\d+ ms", rows["p99"])
    assert "Cresta outage" not in table
    assert table.endswith("result: OK (nothing missing, duplicated or altered)")


def test_the_summary_table_names_what_failed_and_shows_the_outage():
    report = DemoReport(
        summary_with(
            missing=3, cresta_outage_s=[2.0, 4.0], chunks_sent_during_outage=1, cresta_resumed_after_s=1.25
        )
    )
    table = report.table()
    assert not report.ok
    assert "Cresta outage, 2 s to 6 s into the calls" in table
    assert "1.25 s (slowest)" in table
    assert table.endswith("result: FAILED: 3 chunk(s) missing; 1 chunk(s) SENT while Cresta was away")


def test_the_readme_documents_every_key_of_summary_json():
    section = README.read_text().split("### summary.json", 1)[1].split("\n#", 1)[0]
    documented = {
        key
        for line in section.splitlines()
        if line.startswith("| `")
        for key in re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])
    }
    assert documented == set(summary_with())
