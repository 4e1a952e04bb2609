"""What the audit trail says about the calls it recorded.

Pure functions over a table of audit rows (``pipeline.audit``'s columns): a summary per
contact, delivery latencies, delivery outcomes over time, talk time per track and ingest
lag. ``notebooks/audit_analysis.ipynb`` draws them; ``conform`` first gives any table read
back from Parquet the audit schema's Arrow types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.audit import AUDIT_COLUMNS, ColumnKind, DeliveryStatus

ARROW_TYPES: dict[ColumnKind, pa.DataType] = {
    ColumnKind.STRING: pa.string(),
    ColumnKind.INT: pa.int32(),
    ColumnKind.BIGINT: pa.int64(),
    ColumnKind.DOUBLE: pa.float64(),
    ColumnKind.BOOLEAN: pa.bool_(),
    ColumnKind.TIMESTAMP_MS: pa.timestamp("ms", tz="UTC"),
    ColumnKind.JSON_MAP: pa.string(),
    ColumnKind.BYTES: pa.binary(),
}

#: A chunk louder than this is speech: the level of a quiet line's noise floor is
#: around -60 dBFS, a voice's -30 to -15 dBFS.
TALK_THRESHOLD_DBFS = -40.0

#: Bin widths for outcomes over time, in seconds; the narrowest that keeps the number of
#: bins within bounds is used, so the time axis reads in round units.
BIN_WIDTHS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)

STATUSES = tuple(status.value for status in DeliveryStatus)


class AuditTableError(ValueError):
    """The table is not an audit trail."""


def conform(table: pa.Table) -> pa.Table:
    """The audit columns in schema order with their Arrow types.

    Flink's Parquet writer stores timestamps as INT96, which reads back as naive
    nanoseconds; they become UTC milliseconds. Partition columns (``dt``, ``hour``) and the
    optional ``pcm`` column are left out: nothing here needs them.
    """
    missing = [column.name for column in AUDIT_COLUMNS if column.name not in table.column_names]
    if missing:
        raise AuditTableError(f"not an audit trail: missing column(s) {', '.join(missing)}")
    try:
        return pa.table(
            {column.name: table[column.name].cast(ARROW_TYPES[column.kind]) for column in AUDIT_COLUMNS}
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise AuditTableError(f"not an audit trail: {error}") from error


def contact_summary(table: pa.Table) -> pa.Table:
    """One row per contact, earliest first.

    ``duration_s`` runs from the first chunk's first sample to the last chunk's end over
    both tracks; ``missing_chunks`` counts holes in a track's ``seq`` numbers and tracks
    without a final chunk; ``gap_filled_ms`` is the silence inserted for audio missing in
    KVS.
    """
    rows = table.append_column("end_ms", _end_ms(table))
    for status in STATUSES:
        rows = rows.append_column(status.lower(), pc.cast(pc.equal(rows["delivery_status"], status), pa.int64()))
    rows = rows.append_column("attributes_missing_chunks", pc.cast(rows["attributes_missing"], pa.int64()))
    per_contact = _group_by(rows, "contact_id").aggregate(
        [
            ("chunk_start", "min"),
            ("end_ms", "max"),
            ("agent_id", "distinct"),
            ("queue_name", "distinct"),
            ("contact_id", "count"),
            *[(status.lower(), "sum") for status in STATUSES],
            ("gap_filled_ms", "sum"),
            ("attributes_missing_chunks", "sum"),
        ]
    )
    missing = _missing_chunks(table)
    contact_ids = per_contact["contact_id"].to_pylist()
    started = per_contact["chunk_start_min"]
    summary = pa.table(
        {
            "contact_id": per_contact["contact_id"],
            "started": started,
            "duration_s": pc.divide(
                pc.cast(pc.subtract(per_contact["end_ms_max"], _epoch_ms(started)), pa.float64()), 1000.0
            ),
            "agent_id": _joined(per_contact["agent_id_distinct"]),
            "queue_name": _joined(per_contact["queue_name_distinct"]),
            "chunks": per_contact["contact_id_count"],
            **{status.lower(): per_contact[f"{status.lower()}_sum"] for status in STATUSES},
            "missing_chunks": pa.array([missing[c] for c in contact_ids], pa.int64()),
            "gap_filled_ms": per_contact["gap_filled_ms_sum"],
            "attributes_missing": per_contact["attributes_missing_chunks_sum"],
        }
    )
    return summary.sort_by([("started", "ascending"), ("contact_id", "ascending")])


def complete_tracks(table: pa.Table) -> set[tuple[str, str]]:
    """(contact_id, track) of each track whose final chunk and every chunk before it are in."""
    return {(contact_id, track) for contact_id, track, holes in _track_holes(table) if holes == 0}


def _missing_chunks(table: pa.Table) -> dict[str, int]:
    missing: dict[str, int] = {}
    for contact_id, _track, holes in _track_holes(table):
        missing[contact_id] = missing.get(contact_id, 0) + holes
    return missing


def _track_holes(table: pa.Table) -> list[tuple[str, str, int]]:
    """Per track: seq numbers missing below its highest, plus one when its final chunk is."""
    per_track = _group_by(table, ["contact_id", "track"]).aggregate(
        [("seq", "count_distinct"), ("seq", "max"), ("final", "any")]
    )
    return [
        (row["contact_id"], row["track"], row["seq_max"] + 1 - row["seq_count_distinct"] + (not row["final_any"]))
        for row in per_track.to_pylist()
    ]


def _joined(values: pa.ChunkedArray) -> pa.Array:
    return pa.array([", ".join(sorted(v for v in vs if v)) for vs in values.to_pylist()], pa.string())


@dataclass(frozen=True)
class SentLatencies:
    """Latencies of the chunks delivered to Cresta (``SENT``), in milliseconds."""

    #: Chunk assembled → handed to Cresta's socket: the job's own part.
    delivery_ms: np.ndarray
    #: The chunk's last sample produced (Connect's clock) → handed to Cresta's socket.
    #: Includes waiting for Connect to write the KVS fragment that holds the sample (up
    #: to a fragment, about a second), which the audit trail cannot tell apart.
    source_to_cresta_ms: np.ndarray


def sent_latencies(table: pa.Table) -> SentLatencies:
    sent = table.filter(pc.equal(table["delivery_status"], DeliveryStatus.SENT.value))
    delivery = sent["delivery_latency_ms"].to_numpy()
    return SentLatencies(
        delivery_ms=delivery, source_to_cresta_ms=delivery + sent["ingest_lag_ms"].to_numpy()
    )


def percentiles_text(values: np.ndarray) -> str:
    """``p50 … ms, p99 … ms (n chunks)`` for a legend, or ``no chunks``."""
    if len(values) == 0:
        return "no chunks"
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(values)} chunks)"


def cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF: sorted values and the fraction of values at or below each."""
    ordered = np.sort(np.asarray(values))
    return ordered, np.arange(1, ordered.size + 1) / max(ordered.size, 1)


@dataclass(frozen=True)
class StatusTimeline:
    """Delivery outcomes counted in bins of ``bin_s`` seconds."""

    #: Start of each bin (UTC, ``datetime64[ms]``).
    bin_starts: np.ndarray
    bin_s: int
    #: Chunks per bin for each delivery status, in ``STATUSES`` order.
    counts: dict[str, np.ndarray]


def status_over_time(table: pa.Table, max_bins: int = 120) -> StatusTimeline:
    """Chunks per delivery status, binned by when their delivery attempt finished."""
    finished = _epoch_ms(table["delivered_at"]).to_numpy()
    statuses = table["delivery_status"].to_numpy()
    if finished.size == 0:
        return StatusTimeline(np.array([], "datetime64[ms]"), BIN_WIDTHS_S[0], {s: np.array([], int) for s in STATUSES})
    earliest, latest = int(finished.min()), int(finished.max())
    bin_s = next(
        (w for w in BIN_WIDTHS_S if latest // (w * 1000) - earliest // (w * 1000) < max_bins), BIN_WIDTHS_S[-1]
    )
    bin_ms = bin_s * 1000
    first = earliest // bin_ms * bin_ms
    index = (finished - first) // bin_ms
    bins = int(index.max()) + 1
    counts = {status: np.bincount(index[statuses == status], minlength=bins) for status in STATUSES}
    bin_starts = (first + np.arange(bins) * bin_ms).astype("datetime64[ms]")
    return StatusTimeline(bin_starts, bin_s, counts)


def talk_time(table: pa.Table, threshold_dbfs: float = TALK_THRESHOLD_DBFS) -> pa.Table:
    """Per contact and track: seconds of audio, and of audio louder than ``threshold_dbfs``."""
    duration = pc.cast(table["duration_ms"], pa.int64())
    talking = pc.if_else(pc.greater(table["level_dbfs"], threshold_dbfs), duration, 0)
    rows = pa.table(
        {"contact_id": table["contact_id"], "track": table["track"], "audio": duration, "talk": talking}
    )
    per_track = _group_by(rows, ["contact_id", "track"]).aggregate([("audio", "sum"), ("talk", "sum")])
    result = pa.table(
        {
            "contact_id": per_track["contact_id"],
            "track": per_track["track"],
            "audio_s": pc.divide(pc.cast(per_track["audio_sum"], pa.float64()), 1000.0),
            "talk_s": pc.divide(pc.cast(per_track["talk_sum"], pa.float64()), 1000.0),
        }
    )
    return result.sort_by([("contact_id", "ascending"), ("track", "ascending")])


@dataclass(frozen=True)
class LagSeries:
    """One contact's chunks, in the order their audio ends."""

    #: Seconds from the contact's first sample to each chunk's end, ascending.
    seconds_into_call: np.ndarray
    ingest_lag_ms: np.ndarray


def ingest_lag_by_contact(table: pa.Table) -> dict[str, LagSeries]:
    """Each contact's ingest lag (last sample produced → chunk assembled) along the call.

    Chunks without audio (an empty final chunk) are left out: they have no last sample.
    """
    contacts, contact_of_row = np.unique(table["contact_id"].to_numpy(), return_inverse=True)
    first_sample = np.full(len(contacts), np.iinfo(np.int64).max)
    np.minimum.at(first_sample, contact_of_row, _epoch_ms(table["chunk_start"]).to_numpy())
    with_audio = table.filter(pc.greater(table["sample_count"], 0))
    owner = np.searchsorted(contacts, with_audio["contact_id"].to_numpy())
    ends = _end_ms(with_audio).to_numpy()
    order = np.lexsort((ends, owner))
    seconds = (ends[order] - first_sample[owner[order]]) / 1000.0
    lags = with_audio["ingest_lag_ms"].to_numpy()[order]
    bounds = np.searchsorted(owner[order], np.arange(len(contacts) + 1))
    return {
        contact_id: LagSeries(seconds[bounds[i] : bounds[i + 1]], lags[bounds[i] : bounds[i + 1]])
        for i, contact_id in enumerate(contacts.tolist())
    }


def short_labels(contact_ids: list[str], length: int = 8) -> list[str]:
    """The contact ids cut to ``length`` characters, or as many more as keeps them apart."""
    while len({contact_id[:length] for contact_id in contact_ids}) < len(set(contact_ids)):
        length += 1
    return [contact_id[:length] for contact_id in contact_ids]


def _group_by(table: pa.Table, keys: str | list[str]) -> pa.TableGroupBy:
    # pyarrow 11 groups rows wrongly (or crashes) when a table's columns are chunked
    # differently, as computed columns beside read ones are (apache/arrow#34238, fixed in 12).
    return table.combine_chunks().group_by(keys)


def _epoch_ms(timestamps: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return pc.cast(timestamps, pa.int64())


def _end_ms(table: pa.Table) -> pa.ChunkedArray:
    return pc.add(_epoch_ms(table["chunk_start"]), pc.cast(table["duration_ms"], pa.int64()))
