"""Flink functions: thin adapters between Flink's APIs and the ``pipeline`` state machines."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import astuple, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.functions import FlatMapFunction
from pyflink.datastream.state import ValueStateDescriptor

from pipeline.assembler import (
    AssemblyStats,
    AudioChunk,
    CompletenessMismatch,
    ContactAudioAssembler,
    ContactClosed,
    ContactExpired,
    EndRecordMissing,
)
from pipeline.audit import ColumnKind, audit_columns, audit_values
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.metrics import (
    CHUNKS_OUT,
    DELIVERIES,
    DELIVERY_LATENCY_P50,
    DELIVERY_LATENCY_P99,
    DUPLICATES_DROPPED,
    EARLY_AUDIO_CHUNKS,
    ERRORS as ERROR_RECORDS,
    FRAMES_IN,
    FRAMES_REJECTED,
    GAP_FILLED_MS,
    INGEST_LAG_P50,
    INGEST_LAG_P99,
    LATE_FRAMES_DROPPED,
    METRIC_GROUP,
    OVERLAP_SAMPLES_DROPPED,
    MetricSpec,
    RecentPercentiles,
)
from pipeline.records import AudioEnd, AudioFrame, ContactEvent, RecordError, decode_audio_records

log = logging.getLogger(__name__)

#: Tags on the unified keyed stream: (tag, contact_id, decoded record).
AUDIO = "audio"
EVENT = "event"
#: Side output of every function that finds bad input: one JSON line per finding.
ERRORS = OutputTag("errors", Types.STRING())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode_audio(data: bytes) -> list[tuple[str, str, object]]:
    return [(AUDIO, record.contact_id, record) for record in decode_audio_records(data)]


def _decode_event(data: bytes) -> list[tuple[str, str, object]]:
    event = ContactEvent.decode(data)
    return [(EVENT, event.contact_id, event)]


class InjectedFailure(RuntimeError):
    """A task failure asked for by ``job.fail_once_file``, to exercise restarts."""


def _claim(path: str) -> bool:
    """Removes ``path``; True for the one caller (of all subtasks and attempts) that did."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


class _JobMetrics:
    """The catalogue's metrics on one operator's Flink metric group."""

    def __init__(self, runtime_context: RuntimeContext) -> None:
        self.group = runtime_context.get_metrics_group().add_group(METRIC_GROUP)
        self._counters: dict[tuple[str, str, str], object] = {}

    def inc(self, spec: MetricSpec, amount: int = 1, *, label: tuple[str, str] | None = None) -> None:
        """Add to a counter; ``label`` (name, value) puts it in a subgroup, e.g. reason=…"""
        if amount <= 0:
            return
        key = (spec.name, *(label or ("", "")))
        counter = self._counters.get(key)
        if counter is None:
            group = self.group.add_group(*label) if label else self.group
            counter = self._counters[key] = group.counter(spec.name)
        counter.inc(amount)

    def percentiles(self, p50: MetricSpec, p99: MetricSpec) -> RecentPercentiles:
        recent = RecentPercentiles()
        self.group.gauge(p50.name, lambda: recent.percentile(50))
        self.group.gauge(p99.name, lambda: recent.percentile(99))
        return recent


class RecordDecoder(ProcessFunction):
    """Raw Kinesis records → tagged records; undecodable ones go to the error output."""

    DECODERS: dict[str, Callable[[bytes], list[tuple[str, str, object]]]] = {
        AUDIO: _decode_audio,
        EVENT: _decode_event,
    }

    def __init__(self, kind: str, source: str) -> None:
        self.kind = kind
        self.source = source
        self.metrics = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.metrics = _JobMetrics(runtime_context)

    def process_element(self, value, ctx: ProcessFunction.Context):
        data = bytes(value)
        try:
            decoded = self.DECODERS[self.kind](data)
        except RecordError as exc:
            log.warning("invalid record on %s (%s)", self.source, exc)
            self.metrics.inc(ERROR_RECORDS, label=("reason", exc.reason))
            yield ERRORS, PipelineError(_now_ms(), self.source, exc.reason, str(exc), raw=data).to_json()
            return
        yield from decoded


#: The counter each ``AssemblyStats`` field feeds (same name), in field order.
_STATS_METRICS = tuple(
    next(spec for spec in (DUPLICATES_DROPPED, OVERLAP_SAMPLES_DROPPED, LATE_FRAMES_DROPPED, FRAMES_REJECTED)
         if spec.name == stat.name)
    for stat in fields(AssemblyStats)
)


class ContactAssemblerFunction(KeyedProcessFunction):
    """Keyed by ContactId; keeps one ``ContactAudioAssembler`` per contact in state."""

    def __init__(self, config: PipelineConfig) -> None:
        self.assembler_options = {
            "chunk_ms": config["assembler.chunk_ms"],
            "enrich_max_wait_ms": config["enrich.max_wait_ms"],
            "reorder_window_ms": config["assembler.reorder_window_ms"],
            "idle_flush_ms": config["assembler.idle_flush_ms"],
            "state_grace_ms": config["assembler.state_grace_ms"],
        }
        self.ready_file = config["job.ready_file"]
        self.fail_once_file = config["job.fail_once_file"]
        self.state = None
        self.timer_state = None
        self.metrics = None
        self.ingest_lag = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.metrics = _JobMetrics(runtime_context)
        self.ingest_lag = self.metrics.percentiles(INGEST_LAG_P50, INGEST_LAG_P99)
        self.state = runtime_context.get_state(
            ValueStateDescriptor("contact-assembler", Types.PICKLED_BYTE_ARRAY())
        )
        # The assembler's next deadline moves with every frame; remembering the timer
        # already registered keeps it to one pending timer per contact, not one per frame.
        self.timer_state = runtime_context.get_state(ValueStateDescriptor("contact-timer", Types.LONG()))
        if self.ready_file:
            Path(self.ready_file).touch()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        if self.fail_once_file and _claim(self.fail_once_file):
            raise InjectedFailure(f"task failure injected through {self.fail_once_file} (job.fail_once_file)")
        tag, contact_id, record = value
        assembler = self.state.value() or ContactAudioAssembler(contact_id, **self.assembler_options)
        now = _now_ms()
        if tag == EVENT:
            outputs = assembler.on_event(record, now)
        elif isinstance(record, AudioEnd):
            outputs = assembler.on_end(record, now)
        elif isinstance(record, AudioFrame):
            self.metrics.inc(FRAMES_IN)
            before = astuple(assembler.stats)
            outputs = assembler.on_frame(record, now)
            for spec, was, is_now in zip(_STATS_METRICS, before, astuple(assembler.stats)):
                self.metrics.inc(spec, is_now - was)
        else:
            outputs = []
        yield from self._emit(assembler, outputs, ctx, now)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        self.timer_state.clear()
        assembler = self.state.value()
        if assembler is not None:
            now = _now_ms()
            yield from self._emit(assembler, assembler.on_timer(now), ctx, now)

    def _emit(self, assembler: ContactAudioAssembler, outputs, ctx, now: int):
        if any(isinstance(output, ContactExpired) for output in outputs):
            self.state.clear()
            self.timer_state.clear()
        else:
            self.state.update(assembler)
            self._schedule(assembler.next_timer_ms(), ctx, now)
        for output in outputs:
            if isinstance(output, AudioChunk):
                self.metrics.inc(CHUNKS_OUT)
                self.metrics.inc(GAP_FILLED_MS, output.gap_filled_ms)
                self.metrics.inc(EARLY_AUDIO_CHUNKS, int(output.attributes_missing))
                self.ingest_lag.add(output.assembled_at_ms - (output.start_ms + output.duration_ms))
            if isinstance(output, CompletenessMismatch):
                yield ERRORS, self._error(
                    now, output.contact_id, "completeness_mismatch",
                    f"track {output.track.label}: END says {output.expected_samples} samples, "
                    f"assembled {output.assembled_samples}",
                )
            elif isinstance(output, EndRecordMissing):
                yield ERRORS, self._error(
                    now, output.contact_id, "end_record_missing",
                    f"contact ended without the connector's END record (customer {output.customer_samples}, "
                    f"agent {output.agent_samples} samples assembled)",
                )
            elif not isinstance(output, ContactExpired):
                yield output

    def _error(self, now: int, contact_id: str, reason: str, message: str) -> str:
        log.error("contact %s: %s: %s", contact_id, reason, message)
        self.metrics.inc(ERROR_RECORDS, label=("reason", reason))
        return PipelineError(now, "assembler", reason, message, contact_id=contact_id).to_json()

    def _schedule(self, deadline: int | None, ctx, now: int) -> None:
        registered = self.timer_state.value()
        if deadline is None or (registered is not None and now < registered <= deadline):
            return
        ctx.timer_service().register_processing_time_timer(deadline)
        self.timer_state.update(deadline)


class CrestaDeliveryFunction(FlatMapFunction):
    """Sends each chunk to Cresta and turns it into its audit row."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.include_audio = config["audit.include_audio"]
        self.delivery = None
        self.metrics = None
        self.latency = None

    def open(self, runtime_context: RuntimeContext) -> None:
        from connectors.cresta.delivery import CrestaDelivery

        self.metrics = _JobMetrics(runtime_context)
        self.latency = self.metrics.percentiles(DELIVERY_LATENCY_P50, DELIVERY_LATENCY_P99)
        self.delivery = CrestaDelivery.from_config(self.config)

    def close(self) -> None:
        if self.delivery is not None:
            self.delivery.close_all()

    def flat_map(self, value):
        if isinstance(value, ContactClosed):
            self.delivery.close_contact(value.contact_id)
            return
        if isinstance(value, AudioChunk):
            receipt = self.delivery.deliver(value)
            self.metrics.inc(DELIVERIES, label=("status", receipt.status.value))
            self.latency.add(receipt.latency_ms)
            yield audit_row(audit_values(value, receipt, self.include_audio), self.include_audio)


def _to_flink(kind: ColumnKind, value):
    if kind is ColumnKind.TIMESTAMP_MS:
        # Naive UTC: the job's JVM and Python workers run with UTC as their zone.
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc).replace(tzinfo=None)
    return value


def audit_row(values: list, include_audio: bool) -> Row:
    columns = audit_columns(include_audio)
    return Row(*(_to_flink(c.kind, v) for c, v in zip(columns, values)))
