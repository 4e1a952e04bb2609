"""The audit trail's one schema definition (DESIGN §4 AuditRow).

Each column is declared once here with a neutral kind; the Flink job maps the kinds to
Flink types for its Parquet writer and readers (tests, notebook, demo) map them to
pyarrow types, so the writer and every reader agree by construction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from pipeline.assembler import AudioChunk
from pipeline.audio import level_dbfs

PIPELINE_VERSION = "0.1.0"


class DeliveryStatus(str, Enum):
    SENT = "SENT"
    FAILED = "FAILED"
    DROPPED = "DROPPED"
    SKIPPED = "SKIPPED"


class ColumnKind(str, Enum):
    STRING = "string"
    INT = "int"  # 32-bit
    BIGINT = "bigint"  # 64-bit
    DOUBLE = "double"
    BOOLEAN = "boolean"
    TIMESTAMP_MS = "timestamp_ms"  # UTC instant, millisecond precision
    #: Flink 1.20's Parquet writer marks MAP keys optional, which Arrow readers refuse;
    #: maps are therefore stored as JSON object text.
    JSON_MAP = "json_map"
    BYTES = "bytes"


@dataclass(frozen=True)
class Column:
    name: str
    kind: ColumnKind
    doc: str


AUDIT_COLUMNS: tuple[Column, ...] = (
    Column("contact_id", ColumnKind.STRING, "Amazon Connect ContactId"),
    Column("instance_id", ColumnKind.STRING, "Amazon Connect instance id"),
    Column("track", ColumnKind.STRING, "customer (AUDIO_FROM_CUSTOMER) or agent (AUDIO_TO_CUSTOMER)"),
    Column("seq", ColumnKind.BIGINT, "chunk number per contact and track, from 0"),
    Column("chunk_start", ColumnKind.TIMESTAMP_MS, "producer time of the chunk's first sample"),
    Column("duration_ms", ColumnKind.INT, "audio length of the chunk"),
    Column("sample_count", ColumnKind.INT, "PCM samples in the chunk"),
    Column("sample_rate", ColumnKind.INT, "samples per second"),
    Column("final", ColumnKind.BOOLEAN, "last chunk of the track (may be shorter)"),
    Column("pcm_sha256", ColumnKind.STRING, "SHA-256 of the chunk's PCM16LE bytes"),
    Column("level_dbfs", ColumnKind.DOUBLE, "RMS level of the chunk in dBFS"),
    Column("gap_filled_ms", ColumnKind.INT, "silence inserted for audio missing in KVS"),
    Column(
        "attributes", ColumnKind.JSON_MAP,
        "contact attributes sent with the chunk (JSON object; every attribute with audit.all_attributes)",
    ),
    Column("attributes_missing", ColumnKind.BOOLEAN, "chunk left before the STARTED event"),
    Column("agent_id", ColumnKind.STRING, "agent handling the contact"),
    Column("queue_name", ColumnKind.STRING, "Connect queue"),
    Column("delivery_status", ColumnKind.STRING, "SENT | FAILED | DROPPED | SKIPPED"),
    Column("delivery_attempts", ColumnKind.INT, "sends tried for this chunk"),
    Column("delivery_latency_ms", ColumnKind.BIGINT, "chunk assembled → handed to Cresta's socket"),
    Column("ingest_lag_ms", ColumnKind.BIGINT, "chunk's last sample produced → chunk assembled"),
    Column("delivered_at", ColumnKind.TIMESTAMP_MS, "when the delivery attempt finished"),
    Column("pipeline_version", ColumnKind.STRING, "version of the code that wrote the row"),
)

#: Only with ``audit.include_audio``: the audio is cardholder/PII data, off by default.
PCM_COLUMN = Column("pcm", ColumnKind.BYTES, "the chunk's PCM16LE audio")


def audit_columns(include_audio: bool) -> tuple[Column, ...]:
    return AUDIT_COLUMNS + ((PCM_COLUMN,) if include_audio else ())


@dataclass(frozen=True)
class DeliveryReceipt:
    status: DeliveryStatus
    attempts: int
    latency_ms: int
    finished_at_ms: int


def audit_values(
    chunk: AudioChunk,
    receipt: DeliveryReceipt,
    include_audio: bool,
    attributes: Collection[str] | None = None,
) -> list[object]:
    """One audit row as a list ordered like ``audit_columns(include_audio)``.

    ``attributes``: the contact attributes the row keeps (those sent to Cresta); None
    keeps them all.

    Timestamps are epoch milliseconds; the writer converts them to its own type.
    """
    last_sample_ms = chunk.start_ms + chunk.duration_ms
    values: list[object] = [
        chunk.contact_id,
        chunk.info.instance_id,
        chunk.track.label,
        chunk.seq,
        chunk.start_ms,
        chunk.duration_ms,
        chunk.sample_count,
        chunk.sample_rate,
        chunk.final,
        hashlib.sha256(chunk.pcm).hexdigest(),
        level_dbfs(chunk.pcm),
        chunk.gap_filled_ms,
        json.dumps(
            {k: v for k, v in chunk.info.attributes.items() if attributes is None or k in attributes},
            sort_keys=True,
        ),
        chunk.attributes_missing,
        chunk.info.agent_id,
        chunk.info.queue_name,
        receipt.status.value,
        receipt.attempts,
        receipt.latency_ms,
        max(0, chunk.assembled_at_ms - last_sample_ms),
        receipt.finished_at_ms,
        PIPELINE_VERSION,
    ]
    if include_audio:
        values.append(chunk.pcm)
    return values
