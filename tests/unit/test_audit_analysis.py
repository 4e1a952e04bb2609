"""pipeline.audit_analysis over synthetic audit trails (``audit_rows``)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_rows import (
    CHUNK_MS, CONTACT_A, CONTACT_B, LOUD, QUIET, T0, as_read_back, audit, chunk, row, track_rows, write_trail,
)
from connectors.audit_trail import read_audit_trail
from pipeline import audit_analysis as analysis
from pipeline.audit import AUDIT_COLUMNS, DeliveryStatus
from pipeline.records import Track

FAST = settings(max_examples=40, deadline=None)


def test_conform_gives_the_schemas_types_and_utc_milliseconds():
    table = analysis.conform(as_read_back(track_rows(CONTACT_A, Track.CUSTOMER, 2)))
    assert table.column_names == [column.name for column in AUDIT_COLUMNS]
    assert table.schema.field("chunk_start").type == pa.timestamp("ms", tz="UTC")
    assert table["chunk_start"][1].as_py() == datetime.fromtimestamp((T0 + CHUNK_MS) / 1000, timezone.utc)


def test_conform_names_the_missing_columns():
    with pytest.raises(analysis.AuditTableError, match="missing column.*level_dbfs, gap_filled_ms"):
        analysis.conform(as_read_back(track_rows(CONTACT_A, Track.AGENT, 1)).drop(["level_dbfs", "gap_filled_ms"]))


def test_conform_refuses_a_column_of_the_wrong_type():
    table = as_read_back(track_rows(CONTACT_A, Track.AGENT, 1))
    table = table.set_column(table.schema.get_field_index("seq"), "seq", pa.array(["first", "second"]))
    with pytest.raises(analysis.AuditTableError, match="not an audit trail"):
        analysis.conform(table)


def test_a_trail_written_with_int96_timestamps_reads_back_at_the_same_instants(tmp_path):
    rows = track_rows(CONTACT_A, Track.CUSTOMER, 3)
    write_trail(tmp_path, rows)
    table = analysis.conform(read_audit_trail(str(tmp_path)))
    starts = [int(t.timestamp() * 1000) for t in table["chunk_start"].to_pylist()]
    assert starts == [r[4] for r in rows]


def test_contact_summary_counts_outcomes_gaps_and_holes_per_contact():
    rows = track_rows(CONTACT_A, Track.CUSTOMER, 10) + track_rows(CONTACT_A, Track.AGENT, 10)
    # Contact B starts a second later, lost customer seq 3 and its agent's final chunk,
    # had Cresta down for two chunks and one chunk filled with 20 ms of silence.
    b_start = T0 + 1000
    b_customer = [chunk(CONTACT_B, Track.CUSTOMER, seq, start_ms=b_start + seq * CHUNK_MS) for seq in range(6)]
    rows += [row(c) for c in b_customer if c.seq != 3]
    b_final = chunk(CONTACT_B, Track.CUSTOMER, 6, pcm=b"", final=True, start_ms=b_start + 600)
    rows += [row(b_final, DeliveryStatus.SKIPPED)]
    b_agent = [
        chunk(CONTACT_B, Track.AGENT, seq, start_ms=b_start + seq * CHUNK_MS, gap_filled_ms=20 if seq == 1 else 0,
              attributes_missing=seq == 0, agent_id="agent-0002")
        for seq in range(4)
    ]
    statuses = [DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.DROPPED, DeliveryStatus.DROPPED]
    rows += [row(c, status) for c, status in zip(b_agent, statuses)]

    summary = analysis.contact_summary(audit(rows)).to_pylist()

    assert [s["contact_id"] for s in summary] == [CONTACT_A, CONTACT_B]
    a, b = summary
    assert a["duration_s"] == pytest.approx(1.0)
    assert (a["chunks"], a["sent"], a["skipped"], a["failed"], a["dropped"]) == (22, 20, 2, 0, 0)
    assert (a["missing_chunks"], a["gap_filled_ms"], a["attributes_missing"]) == (0, 0, 0)
    assert a["agent_id"] == "agent-0001" and a["queue_name"] == "BasicQueue"
    assert b["started"] == datetime.fromtimestamp(b_start / 1000, timezone.utc)
    assert b["duration_s"] == pytest.approx(0.6)
    assert (b["chunks"], b["sent"], b["skipped"], b["failed"], b["dropped"]) == (10, 6, 1, 1, 2)
    # customer seq 3, and the agent track's final chunk
    assert b["missing_chunks"] == 2
    assert (b["gap_filled_ms"], b["attributes_missing"]) == (20, 1)
    assert b["agent_id"] == "agent-0001, agent-0002"


@FAST
@given(
    chunks=st.integers(min_value=2, max_value=30),
    data=st.data(),
)
def test_missing_chunks_counts_every_lost_chunk_and_outcomes_add_up(chunks, data):
    lost = data.draw(st.sets(st.integers(min_value=0, max_value=chunks - 1)))
    statuses = data.draw(st.lists(st.sampled_from(list(DeliveryStatus)), min_size=chunks, max_size=chunks))
    rows = [
        row(chunk(CONTACT_A, Track.CUSTOMER, seq), statuses[seq]) for seq in range(chunks) if seq not in lost
    ] + [row(chunk(CONTACT_A, Track.CUSTOMER, chunks, pcm=b"", final=True), DeliveryStatus.SKIPPED)]
    (summary,) = analysis.contact_summary(audit(rows)).to_pylist()
    assert summary["missing_chunks"] == len(lost)
    assert summary["chunks"] == chunks - len(lost) + 1
    assert sum(summary[status.value.lower()] for status in DeliveryStatus) == summary["chunks"]


def test_sent_latencies_cover_sent_chunks_only_and_add_ingest_lag():
    rows = [
        row(chunk(CONTACT_A, Track.CUSTOMER, 0, ingest_lag_ms=100), latency_ms=20),
        row(chunk(CONTACT_A, Track.CUSTOMER, 1, ingest_lag_ms=300), latency_ms=50),
        row(chunk(CONTACT_A, Track.CUSTOMER, 2, ingest_lag_ms=100), DeliveryStatus.DROPPED, latency_ms=9000),
    ]
    latencies = analysis.sent_latencies(audit(rows))
    assert latencies.delivery_ms.tolist() == [20, 50]
    assert latencies.source_to_cresta_ms.tolist() == [120, 350]


def test_cdf_is_the_sorted_values_and_the_fraction_at_or_below():
    values, fractions = analysis.cdf(np.array([30, 10, 20, 10]))
    assert values.tolist() == [10, 10, 20, 30]
    assert fractions.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert [a.size for a in analysis.cdf(np.array([]))] == [0, 0]


def test_percentiles_text():
    assert analysis.percentiles_text(np.array([])) == "no chunks"
    assert analysis.percentiles_text(np.arange(1, 102)) == "p50 51 ms, p99 100 ms (101 chunks)"


def test_status_over_time_bins_by_delivery_finish_in_round_widths():
    finished = T0 - T0 % 1000
    rows = [
        row(chunk(CONTACT_A, Track.CUSTOMER, 0), finished_at_ms=finished + 100),
        row(chunk(CONTACT_A, Track.CUSTOMER, 1), finished_at_ms=finished + 900),
        row(chunk(CONTACT_A, Track.CUSTOMER, 2), DeliveryStatus.DROPPED, finished_at_ms=finished + 2500),
        row(chunk(CONTACT_A, Track.CUSTOMER, 3), DeliveryStatus.FAILED, finished_at_ms=finished + 2999),
        row(chunk(CONTACT_A, Track.CUSTOMER, 4), finished_at_ms=finished + 3000),
    ]
    timeline = analysis.status_over_time(audit(rows))
    assert timeline.bin_s == 1
    assert timeline.bin_starts.tolist() == [
        datetime.fromtimestamp((finished + i * 1000) / 1000, timezone.utc).replace(tzinfo=None) for i in range(4)
    ]
    assert timeline.counts["SENT"].tolist() == [2, 0, 0, 1]
    assert timeline.counts["DROPPED"].tolist() == [0, 0, 1, 0]
    assert timeline.counts["FAILED"].tolist() == [0, 0, 1, 0]
    assert timeline.counts["SKIPPED"].tolist() == [0, 0, 0, 0]


def test_status_over_time_widens_bins_to_keep_their_number_bounded():
    rows = [row(chunk(CONTACT_A, Track.CUSTOMER, i), finished_at_ms=T0 + i * 60_000) for i in range(60)]
    timeline = analysis.status_over_time(audit(rows), max_bins=120)
    assert timeline.bin_s == 30  # 59 minutes: 15 s bins would take 237
    assert 118 <= len(timeline.bin_starts) <= 120
    assert int(timeline.counts["SENT"].sum()) == 60


def test_talk_time_counts_chunks_above_the_threshold_per_track():
    rows = [row(chunk(CONTACT_A, Track.CUSTOMER, seq, pcm=LOUD if seq < 3 else QUIET)) for seq in range(5)]
    rows += [row(chunk(CONTACT_A, Track.AGENT, seq, pcm=QUIET if seq < 4 else LOUD)) for seq in range(5)]
    talk = analysis.talk_time(audit(rows)).to_pylist()
    assert [(t["track"], t["audio_s"], t["talk_s"]) for t in talk] == [("agent", 0.5, 0.1), ("customer", 0.5, 0.3)]
    quiet_counts = analysis.talk_time(audit(rows), threshold_dbfs=-70.0).to_pylist()
    assert [t["talk_s"] for t in quiet_counts] == [0.5, 0.5]


def test_per_contact_figures_hold_for_a_trail_read_in_several_batches():
    # Several Parquet files read back as a table of several chunks; computed columns
    # beside them are chunked differently, which must not mix up the groups.
    first = as_read_back(track_rows(CONTACT_A, Track.CUSTOMER, 7) + track_rows(CONTACT_B, Track.AGENT, 2))
    second = as_read_back(track_rows(CONTACT_B, Track.CUSTOMER, 4) + track_rows(CONTACT_A, Track.AGENT, 5))
    table = analysis.conform(pa.concat_tables([first, second]))
    assert table["contact_id"].num_chunks == 2
    talk = {(t["contact_id"], t["track"]): t["audio_s"] for t in analysis.talk_time(table).to_pylist()}
    assert talk == {
        (CONTACT_A, "customer"): 0.7,
        (CONTACT_A, "agent"): 0.5,
        (CONTACT_B, "customer"): 0.4,
        (CONTACT_B, "agent"): 0.2,
    }
    assert [(s["contact_id"], s["chunks"]) for s in analysis.contact_summary(table).to_pylist()] == [
        (CONTACT_A, 14), (CONTACT_B, 8),
    ]


def test_ingest_lag_follows_each_call_from_its_first_sample_without_empty_chunks():
    rows = [row(chunk(CONTACT_A, Track.CUSTOMER, seq, ingest_lag_ms=100 + seq)) for seq in (2, 0, 1)]
    rows += [row(chunk(CONTACT_A, Track.AGENT, 0, ingest_lag_ms=90))]
    b_start = T0 + 5000
    rows += [row(chunk(CONTACT_B, Track.AGENT, s, start_ms=b_start + s * CHUNK_MS, ingest_lag_ms=7)) for s in (0, 1)]
    b_final = chunk(CONTACT_B, Track.AGENT, 2, pcm=b"", final=True, start_ms=b_start + 200)
    rows += [row(b_final, DeliveryStatus.SKIPPED)]
    series = analysis.ingest_lag_by_contact(audit(rows))
    a, b = series[CONTACT_A], series[CONTACT_B]
    assert a.seconds_into_call.tolist() == pytest.approx([0.1, 0.1, 0.2, 0.3])
    assert sorted(a.ingest_lag_ms.tolist()[:2]) == [90, 100] and a.ingest_lag_ms.tolist()[2:] == [101, 102]
    assert b.seconds_into_call.tolist() == pytest.approx([0.1, 0.2])
    assert b.ingest_lag_ms.tolist() == [7, 7]


def test_short_labels_keep_contacts_apart():
    assert analysis.short_labels(["67cca2a6-3de0", "862b3102-d111"]) == ["67cca2a6", "862b3102"]
    assert analysis.short_labels([CONTACT_A, CONTACT_B, CONTACT_A]) == [CONTACT_A, CONTACT_B, CONTACT_A]
    assert analysis.short_labels(["abcdefgh-1", "abcdefgh-2"], length=4) == ["abcdefgh-1", "abcdefgh-2"]
    assert analysis.short_labels([]) == []


def test_a_track_is_complete_only_with_its_final_chunk_and_every_chunk_before_it():
    rows = track_rows("whole", Track.CUSTOMER, 3)
    rows += [r for r in track_rows("holed", Track.CUSTOMER, 3) if r[3] != 1]
    rows += track_rows("unfinished", Track.CUSTOMER, 3)[:-1]
    assert analysis.complete_tracks(audit(rows)) == {("whole", "customer")}
