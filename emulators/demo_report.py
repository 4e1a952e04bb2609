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

from emulators.connect.simulator import SimulatedCall
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
        return (
            s["missing"] == 0
            and s["duplicated"] == 0
            and s["audit_audio_mismatches"] == 0
            and s["audit_samples_missing"] == 0
            and s["cresta_audio_exact"] == s["calls"]
        )

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
            ("audit samples missing", s["audit_samples_missing"]),
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
    """Checks the audit trail and Cresta's audio against what the simulator wrote.

    Chunks are walked in seq order along the source audio: a chunk is usually
    ``chunk_ms`` long, but an idle flush (no audio for a while, e.g. while a killed
    connector's contacts move to another worker) sends a shorter one, and the final
    chunk holds the remainder.
    """
    rows = audit.to_pylist() if audit is not None else []
    keys = [(r["contact_id"], r["track"], r["seq"]) for r in rows]
    by_key = {key: row for key, row in zip(keys, rows)}
    missing = mismatches = samples_missing = received_chunks = exact_contacts = 0
    latencies: list[float] = []
    for call in calls:
        record = cresta_calls.get(call.contact_id)
        contact_exact = record is not None
        write_ends = [f.first_sample + f.sample_count for f in call.fragments]
        for track in Track:
            pcm = call.pcm[track]
            samples = len(pcm) // 2
            received = record.tracks.get(TWILIO_TRACK_OF[track], b"") if record else b""
            receive_times = record.media_receive_times.get(TWILIO_TRACK_OF[track], []) if record else []
            contact_exact = contact_exact and _cresta_audio_matches(pcm, received)
            chunks = sorted((k[2], row) for k, row in by_key.items() if k[:2] == (call.contact_id, track.label))
            seqs = [seq for seq, _ in chunks]
            missing += (seqs[-1] + 1 - len(seqs) if seqs else 0) + (0 if chunks and chunks[-1][1]["final"] else 1)
            offset = 0
            for _, row in chunks:
                end = offset + row["sample_count"]
                if row["pcm_sha256"] != hashlib.sha256(pcm[2 * offset : 2 * end]).hexdigest():
                    mismatches += 1
                if offset < end <= samples:
                    frame = (end - 1) // FRAME_BYTES
                    if frame < len(receive_times):
                        received_chunks += 1
                        fragment = call.fragments[bisect.bisect_right(write_ends, end - 1)]
                        latencies.append((receive_times[frame] - fragment.written_at) * 1000)
                offset = end
            samples_missing += max(0, samples - offset)
        exact_contacts += contact_exact
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
        "cresta_protocol_violations": violations,
        "latency_ms_p50": _percentile(latencies, 50),
        "latency_ms_p99": _percentile(latencies, 99),
        "chunk_ms": chunk_ms,
        "contacts": [call.contact_id for call in calls],
    }
    return DemoReport(summary)


def _cresta_audio_matches(pcm: bytes, received_mulaw: bytes) -> bool:
    """Cresta got exactly the μ-law of the source, the last 20 ms frame padded with silence."""
    expected = pcm16_to_mulaw(pcm)
    padding = (-len(expected)) % FRAME_BYTES
    return received_mulaw == expected + b"\xff" * padding


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
