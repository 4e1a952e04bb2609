"""What the demo checks and reports: completeness, duplicates, audio exactness, latency.

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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from emulators.connect.simulator import SimulatedCall
from pipeline.audio import MULAW_SILENCE, pcm16_to_mulaw
from pipeline.media_streams import FRAME_BYTES, SAMPLE_RATE, TWILIO_TRACK_OF
from pipeline.records import Track


@dataclass
class DemoReport:
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        s = self.summary
        return (
            s["missing"] == 0
            and s["duplicated"] == 0
            and s["audit_audio_mismatches"] == 0
            and s["audit_samples_missing"] == 0
            and self._cresta_ok
        )

    @property
    def _cresta_ok(self) -> bool:
        s = self.summary
        if s["cresta_outage_s"] is not None:
            # Audio that came while Cresta was away is missing there by design (the audit
            # trail says DROPPED or FAILED); what did arrive must be the source's.
            return s["cresta_audio_from_source"] == s["calls"] and s["chunks_sent_during_outage"] == 0
        if s["job_failed_at_s"] is not None:
            # Delivery is at-least-once across a job restart (README): resent audio is
            # expected then, and only then.
            return s["cresta_audio_complete"] == s["calls"]
        return s["cresta_audio_exact"] == s["calls"]

    def table(self) -> str:
        s = self.summary
        lines = [
            ("calls", s["calls"]),
            ("frames read from KVS", s["frames_read"]),
            ("chunks", s["chunks"]),
            ("audit rows", s["audit_rows"]),
            ("chunks received by Cresta", s["cresta_chunks_received"]),
            ("chunks not SENT (DROPPED, FAILED)", s["chunks_not_sent"]),
            ("missing", s["missing"]),
            ("duplicated", s["duplicated"]),
            ("audit audio mismatches", s["audit_audio_mismatches"]),
            ("audit samples missing", s["audit_samples_missing"]),
            ("Cresta audio exact (contacts)", f"{s['cresta_audio_exact']}/{s['calls']}"),
            ("Cresta audio complete (contacts)", f"{s['cresta_audio_complete']}/{s['calls']}"),
            ("resent to Cresta", f"{s['cresta_resent_ms']:.0f} ms"),
            ("never reached Cresta", f"{s['cresta_missing_ms']:.0f} ms"),
            ("protocol violations at Cresta", s["cresta_protocol_violations"]),
            ("pipeline-added latency p50", _ms(s["latency_ms_p50"])),
            ("pipeline-added latency p99", _ms(s["latency_ms_p99"])),
        ]
        if s["cresta_outage_s"] is not None:
            start, duration = s["cresta_outage_s"]
            resumed = s["cresta_resumed_after_s"]
            lines += [
                ("Cresta outage", f"{start:g} s to {start + duration:g} s into the calls"),
                ("chunks SENT during the outage", s["chunks_sent_during_outage"]),
                ("delivery resumed after the outage", "n/a" if resumed is None else f"{resumed:.2f} s (slowest)"),
            ]
        width = max(len(name) for name, _ in lines)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def build_report(
    *,
    calls: list[SimulatedCall],
    audit: pa.Table | None,
    cresta_calls: dict[str, Any],
    chunk_ms: int,
    frames_read: int,
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
    for call in calls:
        record = cresta_calls.get(call.contact_id)
        contact_exact = contact_complete = contact_from_source = record is not None
        write_ends = [f.first_sample + f.sample_count for f in call.fragments]
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
                    first_receipt = _first_receipt(spans, end - 1)
                    if first_receipt is not None:
                        frame = first_receipt // FRAME_BYTES
                        received_chunks += 1
                        fragment = call.fragments[bisect.bisect_right(write_ends, end - 1)]
                        latencies.append((receive_times[frame] - fragment.written_at) * 1000)
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
        "chunk_ms": chunk_ms,
        "contacts": [call.contact_id for call in calls],
        "job_failed_at_s": job_failed_at_s,
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
    return DemoReport(summary)


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


def _first_receipt(spans: list[Span], source_offset: int) -> int | None:
    """Where in the received audio the byte at ``source_offset`` first arrived."""
    for span in spans:
        if span.source <= source_offset < span.source + span.length:
            return span.received + source_offset - span.source
    return None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
