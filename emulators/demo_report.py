"""What the demo checks and reports: completeness, duplicates, audio exactness, latency;
and the live figures it shows while the calls run (``LiveDelivery``, ``progress_line``).

Pipeline-added latency of a chunk = time the Cresta emulator received the media message
holding the chunk's last sample (its first receipt, when a restart resent it) − time the
KVS fragment holding that sample was written. Waiting for the chunk's audio to happen is
thereby excluded (DESIGN §7's "minus chunk_ms").

With a Cresta outage (``--cresta-outage``), the report also says what the outage cost:
chunks not SENT, any SENT while Cresta was away (there should be none), and how long
after the window each contact's audio reached Cresta again.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from emulators.connect.simulator import FragmentWrite, SimulatedCall
from pipeline.audio import MULAW_SILENCE, pcm16_to_mulaw
from pipeline.media_streams import FRAME_BYTES, SAMPLE_RATE, TWILIO_TRACK_OF
from pipeline.records import Track


@dataclass
class DemoReport:
    summary: dict[str, Any]
    #: When the calls were played: (first call started, last call ended), epoch seconds.
    calls_played: tuple[float, float] | None = None
    #: Per chunk that reached Cresta: (seconds into its call of its last sample,
    #: pipeline-added latency in ms); the summary's percentiles are over these.
    chunk_latencies: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """What makes the run fail its checks (the demo's exit status), in words."""
        s = self.summary
        found = [
            f"{s[key]} {label}"
            for key, label in (
                ("missing", "chunk(s) missing"),
                ("duplicated", "chunk(s) duplicated"),
                ("audit_audio_mismatches", "audit row(s) with other audio than the source's"),
                ("audit_samples_missing", "source sample(s) missing from the audit trail"),
            )
            if s[key]
        ]
        calls = s["calls"]
        if s["cresta_outage_s"] is not None:
            # Audio that came while Cresta was away is missing there by design (the audit
            # trail says DROPPED or FAILED); what did arrive must be the source's.
            if s["cresta_audio_from_source"] != calls:
                found.append(f"audio at Cresta not the source's for {calls - s['cresta_audio_from_source']} contact(s)")
            if s["chunks_sent_during_outage"]:
                found.append(f"{s['chunks_sent_during_outage']} chunk(s) SENT while Cresta was away")
        elif s["job_failed_at_s"] is not None:
            # Delivery is at-least-once across a job restart (README): resent audio is
            # expected then, and only then.
            if s["cresta_audio_complete"] != calls:
                found.append(f"audio at Cresta incomplete for {calls - s['cresta_audio_complete']} contact(s)")
        elif s["cresta_audio_exact"] != calls:
            found.append(f"audio at Cresta not exact for {calls - s['cresta_audio_exact']} contact(s)")
        return found

    def table(self) -> str:
        """The summary for people: the key figures by section, and the verdict."""
        s = self.summary
        calls = s["calls"]
        sections: list[tuple[str, list[tuple[str, object]]]] = [
            (
                "",
                [
                    ("calls", calls),
                    ("KVS writes behind real time, p99", _ms(s["fragment_writes_late_ms_p99"])),
                    ("frames read from KVS", s["frames_read"]),
                ],
            ),
            (
                "audit trail",
                [
                    ("chunks", s["chunks"]),
                    ("rows", s["audit_rows"]),
                    ("missing", s["missing"]),
                    ("duplicated", s["duplicated"]),
                    ("audio mismatches", s["audit_audio_mismatches"]),
                    ("samples missing", s["audit_samples_missing"]),
                ],
            ),
            (
                "Cresta",
                [
                    ("chunks received", s["cresta_chunks_received"]),
                    ("chunks not SENT (DROPPED, FAILED)", s["chunks_not_sent"]),
                    ("audio exact (contacts)", f"{s['cresta_audio_exact']}/{calls}"),
                    ("audio complete (contacts)", f"{s['cresta_audio_complete']}/{calls}"),
                    ("audio from the source (contacts)", f"{s['cresta_audio_from_source']}/{calls}"),
                    ("received twice", f"{s['cresta_resent_ms']:.0f} ms"),
                    ("never received", f"{s['cresta_missing_ms']:.0f} ms"),
                    ("protocol violations", s["cresta_protocol_violations"]),
                ],
            ),
            (
                "pipeline-added latency",
                [("p50", _ms(s["latency_ms_p50"])), ("p99", _ms(s["latency_ms_p99"]))],
            ),
        ]
        if s["cresta_outage_s"] is not None:
            start, duration = s["cresta_outage_s"]
            resumed = s["cresta_resumed_after_s"]
            sections.append(
                (
                    f"Cresta outage, {start:g} s to {start + duration:g} s into the calls",
                    [
                        ("chunks SENT during the outage", s["chunks_sent_during_outage"]),
                        ("delivery resumed after", "n/a" if resumed is None else f"{resumed:.2f} s (slowest)"),
                    ],
                )
            )
        faults = [
            (label, f"{s[key]:g} s into the calls")
            for key, label in (
                ("connector_killed_at_s", "connector worker 0 killed"),
                ("job_failed_at_s", "a job task failed"),
            )
            if s.get(key) is not None
        ]
        if faults:
            sections.append(("injected faults", faults))
        return _format_sections(sections) + "\n\n" + self._verdict()

    def _verdict(self) -> str:
        problems = self.problems()
        if not problems:
            return "result: OK (nothing missing, duplicated or altered)"
        return "result: FAILED: " + "; ".join(problems)


def _format_sections(sections: list[tuple[str, list[tuple[str, object]]]]) -> str:
    """Sections of name/value rows, the names indented under their title, the values
    right-aligned in one column; numbers with thousands separators."""
    cells = [
        [(name, f"{value:,}" if isinstance(value, int) else str(value)) for name, value in rows]
        for _, rows in sections
    ]
    name_width = max(len(name) for rows in cells for name, _ in rows) + 2
    value_width = max(len(value) for rows in cells for _, value in rows)
    blocks = []
    for (title, _), rows in zip(sections, cells):
        indent = "  " if title else ""
        lines = [title] if title else []
        lines += [f"{indent + name:<{name_width}}  {value:>{value_width}}" for name, value in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def build_report(
    *,
    calls: list[SimulatedCall],
    audit: pa.Table | None,
    cresta_calls: dict[str, Any],
    chunk_ms: int,
    frames_read: int,
    audit_uri: str,
    connector_workers: int,
    connector_killed_at_s: float | None = None,
    job_failed_at_s: float | None = None,
    cresta_outage: CrestaOutage | None = None,
) -> DemoReport:
    """Checks the audit trail and Cresta's audio against what the simulator wrote.

    Chunks are walked in seq order along the source audio: a chunk is usually
    ``chunk_ms`` long, but an idle flush (no audio for a while, e.g. while a killed
    connector's contacts move to another worker) sends a shorter one, and the final
    chunk holds the remainder.
    """
    # An audit trail given by URI may hold other runs' contacts too.
    contact_ids = {call.contact_id for call in calls}
    rows = [r for r in audit.to_pylist() if r["contact_id"] in contact_ids] if audit is not None else []
    keys = [(r["contact_id"], r["track"], r["seq"]) for r in rows]
    by_key = {key: row for key, row in zip(keys, rows)}
    missing = mismatches = samples_missing = received_chunks = exact_contacts = complete_contacts = 0
    from_source_contacts = resent_bytes = missing_bytes = 0
    resumed_after_s: list[float] = []
    latencies: list[float] = []
    into_call: list[float] = []
    for call in calls:
        record = cresta_calls.get(call.contact_id)
        contact_exact = contact_complete = contact_from_source = record is not None
        for track in Track:
            pcm = call.pcm[track]
            samples = len(pcm) // 2
            expected = pcm16_to_mulaw(pcm)
            received = record.tracks.get(TWILIO_TRACK_OF[track], b"") if record else b""
            receive_times = record.media_receive_times.get(TWILIO_TRACK_OF[track], []) if record else []
            found = cresta_spans(expected, received)
            spans = found or []
            covered = _covered_bytes(spans)
            contact_from_source = contact_from_source and found is not None
            contact_exact = contact_exact and _cresta_audio_matches(expected, received)
            contact_complete = contact_complete and covered == len(expected)
            resent_bytes += sum(s.length for s in spans) - covered
            missing_bytes += len(expected) - covered
            chunks = sorted((k[2], row) for k, row in by_key.items() if k[:2] == (call.contact_id, track.label))
            seqs = [seq for seq, _ in chunks]
            missing += (seqs[-1] + 1 - len(seqs) if seqs else 0) + (0 if chunks and chunks[-1][1]["final"] else 1)
            offset = 0
            for _, row in chunks:
                end = offset + row["sample_count"]
                if row["pcm_sha256"] != hashlib.sha256(pcm[2 * offset : 2 * end]).hexdigest():
                    mismatches += 1
                if offset < end <= samples:
                    receipt = chunk_receipt(call, spans, receive_times, end)
                    if receipt is not None:
                        received_chunks += 1
                        latencies.append(receipt[1])
                        into_call.append(end / SAMPLE_RATE)
                offset = end
            samples_missing += max(0, samples - offset)
        exact_contacts += contact_exact
        complete_contacts += contact_complete
        from_source_contacts += contact_from_source
        if cresta_outage is not None and record is not None:
            resumed = cresta_outage.resumed_after_s(record)
            if resumed is not None:
                resumed_after_s.append(resumed)
    violations = sum(len(r.violations) for r in cresta_calls.values())
    summary = {
        "calls": len(calls),
        "frames_read": frames_read,
        "chunks": len(by_key),
        "audit_rows": len(rows),
        "cresta_chunks_received": received_chunks,
        "missing": missing,
        "duplicated": len(keys) - len(by_key),
        "audit_audio_mismatches": mismatches,
        "audit_samples_missing": samples_missing,
        "cresta_audio_exact": exact_contacts,
        "cresta_audio_complete": complete_contacts,
        "cresta_audio_from_source": from_source_contacts,
        "cresta_resent_ms": resent_bytes * 1000 / SAMPLE_RATE,
        "cresta_missing_ms": missing_bytes * 1000 / SAMPLE_RATE,
        "chunks_not_sent": sum(
            1 for r in rows if r["sample_count"] and r["delivery_status"] in ("DROPPED", "FAILED")
        ),
        "cresta_protocol_violations": violations,
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p99": _percentile(latencies, 99),
        "fragment_writes_late_ms_p99": _percentile([late for call in calls for late in _writes_late_ms(call)], 99),
        "chunk_ms": chunk_ms,
        "contacts": [call.contact_id for call in calls],
        "job_failed_at_s": job_failed_at_s,
        "connector_workers": connector_workers,
        "connector_killed_at_s": connector_killed_at_s,
        "audit_uri": audit_uri,
        "cresta_outage_s": None,
        "chunks_sent_during_outage": None,
        "cresta_resumed_after_s": None,
    }
    if cresta_outage is not None:
        summary["cresta_outage_s"] = [cresta_outage.start_s, cresta_outage.duration_s]
        summary["chunks_sent_during_outage"] = sum(
            1
            for r in rows
            if r["delivery_status"] == "SENT" and cresta_outage.after_the_cut(_epoch_s(r["delivered_at"]))
        )
        summary["cresta_resumed_after_s"] = max(resumed_after_s, default=None)
    return DemoReport(summary, chunk_latencies=list(zip(into_call, latencies)))


#: How long Cresta's cut may take to reach the pipeline: the emulator closes open streams
#: within ``emulators.cresta.server.FAULT_POLL_S`` of the outage's start, and a send that
#: finished before the close arrived was handed to the socket, which is all SENT means.
CUT_NOTICE_S = 0.25


@dataclass(frozen=True)
class CrestaOutage:
    """The window in which the Cresta emulator refused and dropped streams.

    ``start_s`` and ``duration_s`` as given (seconds from the calls' start); ``begins_at``
    and ``ends_at`` on the wall clock (epoch seconds), which the audit trail's
    ``delivered_at`` and the emulator's receive times are on too.
    """

    start_s: float
    duration_s: float
    begins_at: float
    ends_at: float

    @classmethod
    def starting(cls, calls_started_at: float, start_s: float, duration_s: float) -> "CrestaOutage":
        begins_at = calls_started_at + start_s
        return cls(start_s, duration_s, begins_at, begins_at + duration_s)

    def after_the_cut(self, at: float) -> bool:
        """Within the window, once the cut has had ``CUT_NOTICE_S`` to reach the pipeline."""
        return self.begins_at + CUT_NOTICE_S <= at < self.ends_at

    def resumed_after_s(self, record: Any) -> float | None:
        """From the window's end to the first audio Cresta received for the call after it
        (None: nothing came after it, e.g. the call ended during the outage)."""
        after = [t for times in record.media_receive_times.values() for t in times if t >= self.ends_at]
        return min(after) - self.ends_at if after else None


def _epoch_s(timestamp: datetime) -> float:
    """An audit timestamp (naive UTC, as the job writes it) in epoch seconds."""
    return timestamp.replace(tzinfo=timezone.utc).timestamp()


def _cresta_audio_matches(expected: bytes, received: bytes) -> bool:
    """Cresta got exactly the μ-law of the source, the last 20 ms frame padded with silence."""
    padding = (-len(expected)) % FRAME_BYTES
    return received == expected + bytes([MULAW_SILENCE]) * padding


@dataclass(frozen=True)
class Span:
    """``length`` bytes of the source's μ-law from ``source`` on, received at ``received``."""

    received: int
    source: int
    length: int


def cresta_spans(expected: bytes, received: bytes) -> list[Span] | None:
    """Where each byte of a track Cresta received comes from in ``expected`` (its μ-law).

    None when some received audio is not the source's. The emulator records a contact's
    Media Streams one after the other. Each carries whole 20 ms frames of consecutive
    source audio, the last one padded with silence if the stream closed mid-frame. A
    stream opened after a job restart resends from the restored checkpoint: it starts at
    or before where the previous one ended, so each span is looked for there first (the
    synthetic voices' noise floor makes a 20 ms probe unambiguous); audio that never
    reached Cresta (DROPPED while it was away) makes the next span start further on.
    """
    spans: list[Span] = []
    position = covered = 0
    while position < len(received):
        probe = received[position : position + FRAME_BYTES]
        start = expected.rfind(probe, 0, covered + len(probe))
        if start < 0:
            start = expected.find(probe, covered)
        if start < 0:
            return None
        end = position + _common_prefix_length(expected[start:], received[position:])
        frame_end = min(len(received), -(-end // FRAME_BYTES) * FRAME_BYTES)
        if received[end:frame_end].strip(bytes([MULAW_SILENCE])):
            # The match ran a few bytes into a frame that is not the source's next one
            # (its first bytes equal by chance): the span ends at the last whole frame.
            frame_end = end = end // FRAME_BYTES * FRAME_BYTES
            if end <= position:
                return None
        spans.append(Span(position, start, end - position))
        covered = max(covered, start + end - position)
        position = frame_end
    return spans


def _covered_bytes(spans: list[Span]) -> int:
    """Source bytes received at least once."""
    covered = end = 0
    for span in sorted(spans, key=lambda s: s.source):
        start, stop = max(span.source, end), span.source + span.length
        if stop > start:
            covered += stop - start
            end = stop
    return covered


def _common_prefix_length(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
    return int(differ[0]) if differ.size else n


def chunk_receipt(
    call: SimulatedCall, spans: list[Span], receive_times: list[float], end: int
) -> tuple[float, float] | None:
    """When Cresta first received a track's audio up to sample ``end`` (exclusive), and
    its pipeline-added latency in ms: that receipt − the write of the KVS fragment holding
    sample ``end - 1``. None: that sample never reached Cresta (so far).

    ``spans`` and ``receive_times`` are the track's at Cresta (``cresta_spans``, and the
    emulator's receive time of each 20 ms frame); ``call.fragments`` must hold the sample.
    """
    first_receipt = _first_receipt(spans, end - 1)
    if first_receipt is None:
        return None
    received_at = receive_times[first_receipt // FRAME_BYTES]
    fragment = call.fragments[bisect.bisect_right(call.fragments, end - 1, key=_fragment_end)]
    return received_at, (received_at - fragment.written_at) * 1000


def _fragment_end(fragment: FragmentWrite) -> int:
    return fragment.first_sample + fragment.sample_count


def _first_receipt(spans: list[Span], source_offset: int) -> int | None:
    """Where in the received audio the byte at ``source_offset`` first arrived."""
    for span in spans:
        if span.source <= source_offset < span.source + span.length:
            return span.received + source_offset - span.source
    return None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


#: The live latency figures cover the chunks Cresta received in the last this many seconds.
LIVE_WINDOW_S = 5.0


@dataclass(frozen=True)
class LiveFigures:
    """What the demo shows while its calls run."""

    elapsed_s: float
    calls: int
    #: Calls still playing (the demo starts them all at once): not all their audio is in KVS.
    calls_playing: int
    chunks_at_cresta: int
    window_s: float
    #: Over the chunks Cresta received in the last ``window_s``; None: none.
    latency_ms_p50: float | None
    latency_ms_p99: float | None


def progress_line(figures: LiveFigures) -> str:
    """One line of live progress, short enough for an 80-column terminal while the
    figures are those of a demo, e.g. ``12 s | calls playing 3/3 | 660 chunks at Cresta
    | last 5 s p50/p99 269/344 ms``."""
    f = figures
    if f.latency_ms_p50 is None or f.latency_ms_p99 is None:
        latency = "none"
    else:
        latency = f"{f.latency_ms_p50:.0f}/{f.latency_ms_p99:.0f} ms"
    return (
        f"{f.elapsed_s:4.0f} s | calls playing {f.calls_playing}/{f.calls} | {f.chunks_at_cresta:,} chunks at "
        f"Cresta | last {f.window_s:g} s p50/p99 {latency}"
    )


class LiveDelivery:
    """The live figures, from what the demo observes while its calls run: the
    simulator's fragment writes and what the Cresta emulator has received so far.

    A chunk here is ``chunk_ms`` of a track's audio counted from its start, as the job
    cuts them (but for idle flushes), plus the remainder at the end; it counts once
    Cresta holds its last sample, with that sample's latency as the summary measures it
    (``chunk_receipt``). Each observation looks only at chunks not counted yet, so its
    cost follows the new audio; a chunk whose last sample Cresta skipped (audio dropped
    in an outage) is passed over for good. The summary, from the audit trail, is the
    exact account; these figures are for watching.
    """

    def __init__(self, calls: list[SimulatedCall], chunk_ms: int, started_at: float,
                 window_s: float = LIVE_WINDOW_S) -> None:
        self._calls = calls
        self._chunk_samples = SAMPLE_RATE * chunk_ms // 1000
        self._started_at = started_at
        self._window_s = window_s
        self._expected: dict[tuple[str, Track], bytes] = {}
        #: Per track, the index of its first chunk neither counted nor passed over.
        self._next_chunk: dict[tuple[str, Track], int] = {}
        self._chunks = 0
        #: (received at, latency ms) of the chunks received within the window.
        self._recent: list[tuple[float, float]] = []

    def observe(self, cresta_calls: dict[str, Any], now: float) -> LiveFigures:
        """The figures at ``now`` (epoch seconds), given the emulator's calls so far."""
        ended = 0
        for call in self._calls:
            written = _samples_written(call)
            ended += written == len(call.pcm[Track.CUSTOMER]) // 2
            record = cresta_calls.get(call.contact_id)
            if record is not None:
                for track in Track:
                    self._observe_track(call, track, record, written)
        self._recent = [r for r in self._recent if r[0] > now - self._window_s]
        latencies = [latency for _, latency in self._recent]
        return LiveFigures(
            elapsed_s=now - self._started_at,
            calls=len(self._calls),
            calls_playing=len(self._calls) - ended,
            chunks_at_cresta=self._chunks,
            window_s=self._window_s,
            latency_ms_p50=_percentile(latencies, 50),
            latency_ms_p99=_percentile(latencies, 99),
        )

    def _observe_track(self, call: SimulatedCall, track: Track, record: Any, written: int) -> None:
        key = (call.contact_id, track)
        if key not in self._expected:
            self._expected[key] = pcm16_to_mulaw(call.pcm[track])
        spans = cresta_spans(self._expected[key], record.tracks.get(TWILIO_TRACK_OF[track], b""))
        if not spans:
            return
        receive_times = record.media_receive_times.get(TWILIO_TRACK_OF[track], [])
        # Source samples up to here reached Cresta, or were skipped for good.
        reached = max(span.source + span.length for span in spans)
        samples = len(call.pcm[track]) // 2
        index = self._next_chunk.get(key, 0)
        while index * self._chunk_samples < samples:
            end = min((index + 1) * self._chunk_samples, samples)
            if end > min(written, reached):
                break
            receipt = chunk_receipt(call, spans, receive_times, end)
            if receipt is not None:
                self._chunks += 1
                self._recent.append(receipt)
            index += 1
        self._next_chunk[key] = index


def _writes_late_ms(call: SimulatedCall) -> list[float]:
    """How far behind real time each of a call's fragments was in KVS, in ms, against the
    call's most punctual fragment: the simulator writes a fragment once its audio has
    happened, so on a machine that keeps up this stays within a few ms."""
    # When the call's audio would have begun, by each fragment's write.
    begun = [f.written_at - _fragment_end(f) / SAMPLE_RATE for f in call.fragments]
    return [1000 * (at - min(begun)) for at in begun]


def _samples_written(call: SimulatedCall) -> int:
    """Samples per track the simulator has written into KVS so far (fragments are in order)."""
    fragments = call.fragments
    return _fragment_end(fragments[-1]) if fragments else 0
