"""What the demo checks and reports: completeness, duplicates, audio exactness, latency.

Pipeline-added latency of a chunk = time the Cresta emulator received the media message
holding the chunk's last sample − time the KVS fragment holding that sample was written.
Waiting for the chunk's audio to happen is thereby excluded (DESIGN §7's "minus chunk_ms").
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from emulators.connect.simulator import SAMPLE_RATE, SimulatedCall
from pipeline.audio import pcm16_to_mulaw
from pipeline.media_streams import FRAME_BYTES, TWILIO_TRACK_OF
from pipeline.records import Track


def read_audit(audit_dir: Path) -> pa.Table | None:
    """All committed audit rows (in-progress part files are hidden and skipped)."""
    if not audit_dir.exists() or not any(audit_dir.rglob("*.parquet")):
        return None
    return ds.dataset(str(audit_dir), format="parquet", partitioning="hive").to_table()


@dataclass
class DemoReport:
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        s = self.summary
        return s["missing"] == 0 and s["duplicated"] == 0 and s["audit_audio_mismatches"] == 0

    def table(self) -> str:
        s = self.summary
        lines = [
            ("calls", s["calls"]),
            ("frames read from KVS", s["frames_read"]),
            ("chunks", s["chunks"]),
            ("audit rows", s["audit_rows"]),
            ("chunks received by Cresta", s["cresta_chunks_received"]),
            ("missing", s["missing"]),
            ("duplicated", s["duplicated"]),
            ("audit audio mismatches", s["audit_audio_mismatches"]),
            ("Cresta audio exact (contacts)", f"{s['cresta_audio_exact']}/{s['calls']}"),
            ("protocol violations at Cresta", s["cresta_protocol_violations"]),
            ("pipeline-added latency p50", _ms(s["latency_ms_p50"])),
            ("pipeline-added latency p99", _ms(s["latency_ms_p99"])),
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
) -> DemoReport:
    rows = audit.to_pylist() if audit is not None else []
    keys = [(r["contact_id"], r["track"], r["seq"]) for r in rows]
    distinct = set(keys)
    by_key = {(r["contact_id"], r["track"], r["seq"]): r for r in rows}
    expected = _expected_keys(calls, chunk_ms)
    mismatches = 0
    received_chunks = 0
    exact_contacts = 0
    latencies: list[float] = []
    for call in calls:
        record = cresta_calls.get(call.contact_id)
        contact_exact = record is not None
        for track in Track:
            pcm = call.pcm[track]
            samples = len(pcm) // 2
            chunk_samples = SAMPLE_RATE * chunk_ms // 1000
            received = record.tracks.get(TWILIO_TRACK_OF[track], b"") if record else b""
            receive_times = record.media_receive_times.get(TWILIO_TRACK_OF[track], []) if record else []
            contact_exact = contact_exact and _cresta_audio_matches(pcm, received)
            write_ends = [f.first_sample + f.sample_count for f in call.fragments]
            for seq in range(final_seq(samples, chunk_samples) + 1):
                first = seq * chunk_samples
                end = min(samples, first + chunk_samples)
                row = by_key.get((call.contact_id, track.label, seq))
                if row is not None and row["pcm_sha256"] != hashlib.sha256(pcm[2 * first : 2 * end]).hexdigest():
                    mismatches += 1
                if end <= first:
                    continue  # the empty final chunk: nothing is sent for it
                frame = (end - 1) // FRAME_BYTES
                if frame < len(receive_times):
                    received_chunks += 1
                    fragment = call.fragments[bisect.bisect_right(write_ends, end - 1)]
                    latencies.append((receive_times[frame] - fragment.written_at) * 1000)
        exact_contacts += contact_exact
    violations = sum(len(r.violations) for r in cresta_calls.values())
    summary = {
        "calls": len(calls),
        "frames_read": frames_read,
        "chunks": len(distinct),
        "audit_rows": len(rows),
        "cresta_chunks_received": received_chunks,
        "expected_chunks": len(expected),
        "missing": len(expected - distinct),
        "duplicated": len(keys) - len(distinct),
        "audit_audio_mismatches": mismatches,
        "cresta_audio_exact": exact_contacts,
        "cresta_protocol_violations": violations,
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p99": _percentile(latencies, 99),
        "chunk_ms": chunk_ms,
        "contacts": [call.contact_id for call in calls],
    }
    return DemoReport(summary)


def final_seq(samples: int, chunk_samples: int) -> int:
    """The final chunk holds the remainder, which is empty when the audio divides evenly."""
    return samples // chunk_samples


def _expected_keys(calls: list[SimulatedCall], chunk_ms: int) -> set[tuple[str, str, int]]:
    chunk_samples = SAMPLE_RATE * chunk_ms // 1000
    return {
        (call.contact_id, track.label, seq)
        for call in calls
        for track in Track
        for seq in range(final_seq(len(call.pcm[track]) // 2, chunk_samples) + 1)
    }


def _cresta_audio_matches(pcm: bytes, received_mulaw: bytes) -> bool:
    """Cresta got exactly the μ-law of the source, the last 20 ms frame padded with silence."""
    expected = pcm16_to_mulaw(pcm)
    padding = (-len(expected)) % FRAME_BYTES
    return received_mulaw == expected + b"\xff" * padding


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
