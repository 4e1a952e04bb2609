"""Synthetic audit trails for the tests: rows from ``pipeline.audit.audit_values`` (what the
job writes) for hand-built chunks and receipts, in the form Flink's Parquet files read back
as: INT96 timestamps as naive nanoseconds, and the ``dt``/``hour`` partition columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import audit_analysis as analysis
from pipeline.assembler import AudioChunk, ContactInfo
from pipeline.audit import AUDIT_COLUMNS, ColumnKind, DeliveryReceipt, DeliveryStatus, audit_values
from pipeline.records import Track

RATE = 8000
CHUNK_MS = 100
T0 = 1_726_677_688_700  # first sample of the first contact
CONTACT_A = "0f6d3e10-0000-4000-8000-00000000000a"
CONTACT_B = "0f6d3e10-0000-4000-8000-00000000000b"


def tone(amplitude: float, ms: int = CHUNK_MS) -> bytes:
    t = np.arange(RATE * ms // 1000) / RATE
    return (amplitude * np.sin(2 * np.pi * 200 * t)).astype("<i2").tobytes()


LOUD = tone(8000)  # about -12 dBFS
QUIET = tone(30)  # about -60 dBFS


def chunk(
    contact_id: str,
    track: Track,
    seq: int,
    *,
    pcm: bytes = LOUD,
    final: bool = False,
    start_ms: int | None = None,
    ingest_lag_ms: int = 40,
    gap_filled_ms: int = 0,
    attributes_missing: bool = False,
    agent_id: str = "agent-0001",
) -> AudioChunk:
    start = T0 + seq * CHUNK_MS if start_ms is None else start_ms
    duration = len(pcm) // 2 * 1000 // RATE
    return AudioChunk(
        contact_id=contact_id,
        track=track,
        seq=seq,
        start_ms=start,
        sample_rate=RATE,
        pcm=pcm,
        final=final,
        info=ContactInfo(instance_id="instance-1", agent_id=agent_id, queue_name="BasicQueue"),
        attributes_missing=attributes_missing,
        assembled_at_ms=start + duration + ingest_lag_ms,
        gap_filled_ms=gap_filled_ms,
    )


def row(
    audio: AudioChunk,
    status: DeliveryStatus = DeliveryStatus.SENT,
    latency_ms: int = 30,
    finished_at_ms: int | None = None,
) -> list[object]:
    finished = audio.assembled_at_ms + latency_ms if finished_at_ms is None else finished_at_ms
    return audit_values(audio, DeliveryReceipt(status, 1, latency_ms, finished), include_audio=False)


def track_rows(contact_id: str, track: Track, chunks: int, **options: object) -> list[list[object]]:
    """``chunks`` sent chunks and the track's empty final chunk (SKIPPED), as the demo's calls end."""
    rows = [row(chunk(contact_id, track, seq, **options)) for seq in range(chunks)]
    final = chunk(contact_id, track, chunks, **{**options, "pcm": b"", "final": True})
    rows.append(row(final, DeliveryStatus.SKIPPED))
    return rows


def as_read_back(rows: list[list[object]]) -> pa.Table:
    """The rows as a table read back from the job's Parquet files."""
    columns = {}
    for index, column in enumerate(AUDIT_COLUMNS):
        values = [r[index] for r in rows]
        if column.kind is ColumnKind.TIMESTAMP_MS:
            columns[column.name] = pa.array([v * 1_000_000 for v in values], pa.timestamp("ns"))
        else:
            columns[column.name] = pa.array(values, analysis.ARROW_TYPES[column.kind])
    columns["dt"] = pa.array(["2024-09-18"] * len(rows))
    columns["hour"] = pa.array([16] * len(rows), pa.int32())
    return pa.table(columns)


def audit(rows: list[list[object]]) -> pa.Table:
    return analysis.conform(as_read_back(rows))


def write_trail(root: Path, rows: list[list[object]]) -> Path:
    """The rows as one Parquet part file under ``root/dt=…/hour=…``, timestamps in INT96 as Flink writes them."""
    partition = root / "dt=2024-09-18" / "hour=16"
    partition.mkdir(parents=True, exist_ok=True)
    part = partition / f"audit-{len(list(partition.iterdir()))}.parquet"
    pq.write_table(as_read_back(rows).drop(["dt", "hour"]), part, use_deprecated_int96_timestamps=True)
    return part
