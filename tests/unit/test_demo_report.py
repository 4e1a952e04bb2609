"""How the demo report reads the audio Cresta received back onto the source: streams that
resend after a restart, and gaps where Cresta was away."""

import random

import pyarrow as pa

from hypothesis import given
from hypothesis import strategies as st

from emulators.connect.simulator import SimulatedCall
from emulators.demo import RUN_OUTPUTS, clear_previous_run
from emulators.demo_report import CrestaOutage, Span, _covered_bytes, build_report, cresta_spans
from pipeline.audio import MULAW_SILENCE
from pipeline.media_streams import FRAME_BYTES
from pipeline.records import Track

FRAMES = 40


def source(seed: int) -> bytes:
    """μ-law noise: every 20 ms frame of it is unique, as the demo's voices are."""
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(FRAMES * FRAME_BYTES))


@st.composite
def received_segments(draw) -> list[tuple[int, int]]:
    """Frame ranges Cresta got, in order of arrival: each continues the last, starts
    again further back (a resend after a restart) or further on (audio it missed)."""
    segments = []
    end = 0
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, FRAMES - 1))
        stop = draw(st.integers(start + 1, FRAMES))
        if segments and draw(st.booleans()):
            start = end
            if start >= FRAMES:
                break
            stop = draw(st.integers(start + 1, FRAMES))
        segments.append((start, stop))
        end = stop
    return segments


@given(received_segments(), st.integers(0, 1000))
def test_every_received_byte_is_traced_to_its_source_and_coverage_counts_each_once(segments, seed):
    expected = source(seed)
    received = b"".join(expected[a * FRAME_BYTES : b * FRAME_BYTES] for a, b in segments)
    spans = cresta_spans(expected, received)
    assert spans is not None
    assert sum(span.length for span in spans) == len(received)
    for span in spans:
        got = received[span.received : span.received + span.length]
        assert got == expected[span.source : span.source + span.length]
    frames_received = {frame for a, b in segments for frame in range(a, b)}
    assert _covered_bytes(spans) == len(frames_received) * FRAME_BYTES


def test_audio_that_is_not_the_source_s_is_refused():
    expected = source(1)
    foreign = bytes((b + 1) % 256 for b in expected[:FRAME_BYTES])
    assert cresta_spans(expected, expected[: 3 * FRAME_BYTES] + foreign) is None


def test_a_last_frame_padded_with_silence_ends_its_span():
    expected = source(2)
    received = expected[: FRAME_BYTES + 100] + bytes([MULAW_SILENCE]) * (FRAME_BYTES - 100)
    assert cresta_spans(expected, received) == [Span(received=0, source=0, length=FRAME_BYTES + 100)]


def test_an_outage_window_counts_sends_only_once_the_cut_can_have_reached_the_pipeline():
    outage = CrestaOutage.starting(1_000.0, start_s=2.0, duration_s=4.0)
    assert (outage.begins_at, outage.ends_at) == (1_002.0, 1_006.0)
    assert not outage.after_the_cut(1_002.1)
    assert outage.after_the_cut(1_002.3) and outage.after_the_cut(1_005.9)
    assert not outage.after_the_cut(1_006.0)


def test_the_report_counts_only_this_runs_contacts(tmp_path):
    """An audit trail named by URI may hold earlier runs: their rows are not this run's."""
    call = SimulatedCall("this-run", "arn:aws:kinesisvideo:us-east-1:1:stream/s/1", "i", 0.0, 0, {}, "",
                         pcm={Track.CUSTOMER: b"", Track.AGENT: b""})
    earlier = pa.table({"contact_id": ["earlier-run"], "track": ["customer"], "seq": [0], "final": [True],
                        "sample_count": [0], "pcm_sha256": [""]})
    report = build_report(calls=[call], audit=earlier, cresta_calls={}, chunk_ms=100, frames_read=0,
                          audit_uri="file:///audit", connector_workers=1)
    assert (report.summary["audit_rows"], report.summary["chunks"], report.summary["duplicated"]) == (0, 0, 0)
    assert report.summary["missing"] == 2  # this run's two tracks have no final chunk


def test_a_new_demo_run_replaces_what_the_last_left_in_its_output_directory(tmp_path):
    for name in RUN_OUTPUTS:
        if "." in name:
            (tmp_path / name).write_text("{}")
        else:
            (tmp_path / name / "dt=2026-01-01").mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    clear_previous_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "notes.txt"]
