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
from pyflink.common.time import Time
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ListStateDescriptor, StateTtlConfig, ValueStateDescriptor

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
from pipeline.records import AudioEnd, AudioFrame, ContactEvent, RecordError, Track, decode_audio_records

log = logging.getLogger(__name__)

#: Tags on the unified keyed stream: (AUDIO, contact_id, a KDS record's AudioFrames or
#: its AudioEnd, as a list) or (EVENT, contact_id, ContactEvent). A record's frames stay
#: one element: the keyed step then reads and writes the contact's state once for all of
#: them, not once per frame (a 1 s Connect fragment is 32 frames; measured in
#: BENCHMARKS.md, "What the job's cost is made of", P5).
AUDIO = "audio"
EVENT = "event"
#: Side output of every function that finds bad input: one JSON line per finding.
ERRORS = OutputTag("errors", Types.STRING())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode_audio(data: bytes) -> list[tuple[str, str, object]]:
    records = decode_audio_records(data)
    # A frame batch holds one contact's frames (decode_audio_records checks it).
    return [(AUDIO, records[0].contact_id, records)] if records else []


def _decode_event(data: bytes) -> list[tuple[str, str, object]]:
    event = ContactEvent.decode(data)
    return [(EVENT, event.contact_id, event)]


def expiring(descriptor, ttl_ms: int):
    """``descriptor`` with a TTL of ``ttl_ms`` after the last write (0: never expires).

    The state machines clear their own state when a contact ends; TTL only catches a
    contact whose end never arrives, so the state of a long-dead contact cannot pile up.
    Expired state may still be read until it is cleaned up: PyFlink turns the Python
    worker's state cache off for ``NeverReturnExpired``, which made every state access a
    round trip to the JVM and put the job seconds behind.
    """
    if ttl_ms:
        descriptor.enable_time_to_live(
            StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
            .cleanup_incrementally(10, False)
            .cleanup_full_snapshot()
            .build()
        )
    return descriptor


class InjectedFailure(RuntimeError):
    """A task failure asked for by ``job.fail_once_file``, to exercise restarts."""


def _claim(path: str) -> bool:
    """Removes ``path``; True for the one caller (of all subtasks and attempts) that did."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def _in_worker_processes(config: PipelineConfig) -> bool:
    return config["flink.python_execution_mode"] == "process"


class _JobMetrics:
    """The catalogue's metrics on one operator's Flink metric group, in the group Managed
    Flink exports to CloudWatch (``pipeline.metrics``).

    ``held``: PyFlink's worker processes run a function's timers outside the operator's
    metric scope (``process_timer``, unlike ``process``, enters no scoped state), so
    what a timer counted would be lost: the receipts of chunks sent while a contact had no
    new record, its idle flushes, its end. With ``held``, counts wait in this object and
    are applied when Flink reads the operator's gauges at the end of each bundle, which
    happens inside the operator's scope; ``percentiles`` registers those gauges, so a
    held group must have percentiles. In thread mode metrics go straight to the JVM.
    """

    def __init__(self, runtime_context: RuntimeContext, held: bool = False) -> None:
        self.group = runtime_context.get_metrics_group().add_group(METRIC_GROUP)
        self._updates: dict[tuple[str, str, str], Callable[[int], None]] = {}
        self._held: dict[tuple[str, str, str], int] | None = {} if held else None

    def inc(self, spec: MetricSpec, amount: int = 1, *, label: tuple[str, str] | None = None) -> None:
        """Add to a counter or mark events on a meter; ``label`` (key, value) is the key/value
        group the catalogue splits the metric by, e.g. ("status", "SENT")."""
        if amount <= 0:
            return
        key = (spec.name, *(label or ("", "")))
        update = self._updates.get(key)
        if update is None:
            if (label[0] if label else "") != spec.dimension:
                raise ValueError(f"{spec.name} is split by {spec.dimension!r}, not by {label!r}")
            group = self.group.add_group(*label) if label else self.group
            update = group.meter(spec.name).mark_event if spec.kind == "meter" else group.counter(spec.name).inc
            self._updates[key] = update
        if self._held is None:
            update(amount)
        else:
            self._held[key] = self._held.get(key, 0) + amount

    def _apply_held(self) -> None:
        if self._held:
            for key, amount in self._held.items():
                self._updates[key](amount)
            self._held.clear()

    def percentiles(self, p50: MetricSpec, p99: MetricSpec) -> RecentPercentiles:
        recent = RecentPercentiles()

        def median() -> int:
            self._apply_held()
            return recent.percentile(50)

        self.group.gauge(p50.name, median)
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
        self.state_ttl_ms = config["assembler.state_ttl_ms"]
        self.hold_metrics = _in_worker_processes(config)
        self.ready_file = config["job.ready_file"]
        self.fail_once_file = config["job.fail_once_file"]
        self.state = None
        self.timer_state = None
        self.expired_state = None
        self.metrics = None
        self.ingest_lag = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.metrics = _JobMetrics(runtime_context, held=self.hold_metrics)
        self.ingest_lag = self.metrics.percentiles(INGEST_LAG_P50, INGEST_LAG_P99)
        self.state = runtime_context.get_state(
            expiring(ValueStateDescriptor("contact-assembler", Types.PICKLED_BYTE_ARRAY()), self.state_ttl_ms)
        )
        # The assembler's next deadline moves with every frame; remembering the timer
        # already registered keeps it to one pending timer per contact, not one per frame.
        self.timer_state = runtime_context.get_state(
            expiring(ValueStateDescriptor("contact-timer", Types.LONG()), self.state_ttl_ms)
        )
        # Set when a contact's assembler is cleared: audio that comes after that (a
        # connector worker resumed past the grace period) must not start the contact
        # again at seq 0 and duplicate its audit rows. True once that audio was reported.
        self.expired_state = runtime_context.get_state(
            expiring(ValueStateDescriptor("contact-expired", Types.BOOLEAN()), self.state_ttl_ms)
        )
        if self.ready_file:
            Path(self.ready_file).touch()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        if self.fail_once_file and _claim(self.fail_once_file):
            raise InjectedFailure(f"task failure injected through {self.fail_once_file} (job.fail_once_file)")
        tag, contact_id, payload = value
        records = payload if tag == AUDIO else (payload,)
        now = _now_ms()
        late_audio_reported = self.expired_state.value()
        if late_audio_reported is not None:
            yield from self._drop_after_expiry(contact_id, records, late_audio_reported, now)
            return
        assembler = self.state.value() or ContactAudioAssembler(contact_id, **self.assembler_options)
        stats_before = astuple(assembler.stats)
        frames_in = 0
        outputs = []
        for record in records:
            if isinstance(record, AudioFrame):
                frames_in += 1
                outputs += assembler.on_frame(record, now)
            elif isinstance(record, AudioEnd):
                outputs += assembler.on_end(record, now)
            elif isinstance(record, ContactEvent):
                outputs += assembler.on_event(record, now)
        self.metrics.inc(FRAMES_IN, frames_in)
        for spec, was, is_now in zip(_STATS_METRICS, stats_before, astuple(assembler.stats)):
            self.metrics.inc(spec, is_now - was)
        yield from self._emit(assembler, outputs, ctx, now)

    def _drop_after_expiry(self, contact_id: str, records, late_audio_reported: bool, now: int):
        frames = sum(isinstance(record, AudioFrame) for record in records)
        if not frames:
            return
        self.metrics.inc(FRAMES_IN, frames)
        if not late_audio_reported:
            self.expired_state.update(True)
            yield ERRORS, self._error(
                now, contact_id, "audio_after_expiry",
                f"audio arrived after the contact was closed and its state cleared; dropped "
                f"(it came more than assembler.state_grace_ms = {self.assembler_options['state_grace_ms']} "
                f"after the contact's end)",
            )

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
            self.expired_state.update(False)
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


#: How often a contact whose chunks wait for their receipts looks for them. It decides
#: only when audit rows leave this function (the sink commits them on checkpoints,
#: seconds apart); the audio goes to Cresta as soon as its chunk arrives. At 50 ms the
#: timers of contacts with chunks waiting took ~15% of the keyed step (BENCHMARKS.md, P4).
RECEIPT_POLL_MS = 200


def _chunk_key(chunk: AudioChunk) -> tuple[Track, int]:
    return chunk.track, chunk.seq


class CrestaDeliveryFunction(KeyedProcessFunction):
    """Keyed by ContactId: hands chunks to the non-blocking ``CrestaDeliveryService`` and
    turns each chunk's receipt into its audit row, never waiting for Cresta. The job runs
    it inside the assembling step (``AssembleAndDeliverFunction``).

    A chunk stays in its contact's keyed state from its arrival until the step that emits
    its row, so a checkpoint holds every chunk either as a row already sent towards the
    sink or in state, never both and never neither: the audit trail stays exactly-once.
    Receipts are polled one contact at a time, in that contact's key context, when its
    next record comes and on a processing-time timer (one pending per contact) every
    ``RECEIPT_POLL_MS`` while it has chunks waiting. A contact with nothing waiting keeps
    no state and no timer.

    After a restore the new service knows none of the chunks in state: the first time
    this instance meets such a contact it submits them again, in order, before anything
    newer, and closes the contact again if it was closing. Cresta receives them a second
    time, on a new stream (at-least-once); their rows are emitted once.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.include_audio = config["audit.include_audio"]
        self.audit_attributes = None
        self.service = None
        self.waiting = None
        self.closing = None
        self.timer_state = None
        self.metrics = None
        self.latency = None
        #: Per contact met by this instance: the chunks waiting in its state, all of which
        #: this instance has submitted. Not state: a restored instance starts empty.
        self.submitted: dict[str, set[tuple[Track, int]]] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        from connectors.cresta.settings import CrestaSettings, create_delivery_service

        self.metrics = _JobMetrics(runtime_context, held=_in_worker_processes(self.config))
        self.latency = self.metrics.percentiles(DELIVERY_LATENCY_P50, DELIVERY_LATENCY_P99)
        ttl_ms = self.config["assembler.state_ttl_ms"]
        self.waiting = runtime_context.get_list_state(
            expiring(ListStateDescriptor("cresta-waiting-chunks", Types.PICKLED_BYTE_ARRAY()), ttl_ms)
        )
        self.closing = runtime_context.get_state(
            expiring(ValueStateDescriptor("cresta-closing", Types.BOOLEAN()), ttl_ms)
        )
        self.timer_state = runtime_context.get_state(
            expiring(ValueStateDescriptor("cresta-receipt-timer", Types.LONG()), ttl_ms)
        )
        self.submitted = {}
        settings = CrestaSettings.from_config(self.config)
        self.audit_attributes = None if self.config["audit.all_attributes"] else settings.attribute_allowlist
        self.service = create_delivery_service(settings)

    def close(self) -> None:
        # Nothing to wait for: no row can leave from here, and the chunks still waiting
        # are in the last checkpoint's state, which the next instance submits again.
        # Waiting would only hold up a restart (by the close grace, when Cresta is away).
        if self.service is not None:
            self.service.close(timeout_s=0)

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        contact_id = ctx.get_current_key()
        self._take_over(contact_id)
        if isinstance(value, AudioChunk):
            self.service.submit(value)
            yield from self._collect(contact_id, ctx, value)
        elif isinstance(value, ContactClosed):
            # The service closes the stream behind the chunks queued before it, failing
            # those still waiting when its grace runs out.
            self.service.close_contact(contact_id)
            self.closing.update(True)
            yield from self._collect(contact_id, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        # The contact's other timers (the assembler's) tick this too: polling early is
        # harmless, and the pending poll timer stays known.
        if timestamp == self.timer_state.value():
            self.timer_state.clear()
        contact_id = ctx.get_current_key()
        self._take_over(contact_id)
        yield from self._collect(contact_id, ctx)

    def _take_over(self, contact_id: str) -> None:
        """Submits again what an earlier instance left waiting, the first time this one
        meets the contact."""
        if contact_id in self.submitted:
            return
        submitted = self.submitted[contact_id] = set()
        for chunk in self.waiting.get():
            self.service.submit(chunk)
            submitted.add(_chunk_key(chunk))
        if submitted and self.closing.value():
            self.service.close_contact(contact_id)

    def _collect(self, contact_id: str, ctx, arrived: AudioChunk | None = None):
        """The rows of the contact's receipts ready now; the rest of its chunks wait."""
        delivered = self.service.poll_receipts(contact_id)
        receipted = {_chunk_key(d.chunk) for d in delivered}
        submitted = self.submitted[contact_id]
        still_waiting = submitted - receipted
        new = arrived is not None and _chunk_key(arrived) not in receipted
        if new:
            still_waiting.add(_chunk_key(arrived))
        if not still_waiting:
            self._forget(contact_id, ctx)
        else:
            if submitted & receipted:
                kept = [chunk for chunk in self.waiting.get() if _chunk_key(chunk) not in receipted]
                if new:
                    kept.append(arrived)
                self.waiting.update(kept)
            elif new:
                self.waiting.add(arrived)
            self.submitted[contact_id] = still_waiting
            if self.timer_state.value() is None:
                poll_at = ctx.timer_service().current_processing_time() + RECEIPT_POLL_MS
                ctx.timer_service().register_processing_time_timer(poll_at)
                self.timer_state.update(poll_at)
        for d in delivered:
            self.metrics.inc(DELIVERIES, label=("status", d.receipt.status.value))
            self.latency.add(d.receipt.latency_ms)
            yield audit_row(audit_values(d.chunk, d.receipt, self.include_audio, self.audit_attributes), self.include_audio)

    def _forget(self, contact_id: str, ctx) -> None:
        del self.submitted[contact_id]
        self.waiting.clear()
        self.closing.clear()
        poll_at = self.timer_state.value()
        if poll_at is not None:
            ctx.timer_service().delete_processing_time_timer(poll_at)
            self.timer_state.clear()


class AssembleAndDeliverFunction(KeyedProcessFunction):
    """Keyed by ContactId: the contact's ``ContactAssemblerFunction``, and what it emits
    through ``CrestaDeliveryFunction``, in one step; emits audit rows (and errors).

    Delivery shares the assembler's operator instead of following a second key_by: a
    chunk is handed to Cresta as soon as it is cut, not after the rest of the assembler's
    Python bundle and a network exchange to another Python operator, which cost ~200 ms
    (p50) from assembly to Cresta in the demo. Each keeps its own keyed state and timer;
    a timer of the contact ticks both, and each does only what is due by then.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.assembler = ContactAssemblerFunction(config)
        self.delivery = CrestaDeliveryFunction(config)

    def open(self, runtime_context: RuntimeContext) -> None:
        self.delivery.open(runtime_context)
        # Last: the assembler's open announces the job ready (``job.ready_file``).
        self.assembler.open(runtime_context)

    def close(self) -> None:
        self.assembler.close()
        self.delivery.close()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        yield from self._deliver(self.assembler.process_element(value, ctx), ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        yield from self._deliver(self.assembler.on_timer(timestamp, ctx), ctx)
        yield from self.delivery.on_timer(timestamp, ctx)

    def _deliver(self, outputs, ctx):
        for output in outputs:
            if isinstance(output, (AudioChunk, ContactClosed)):
                yield from self.delivery.process_element(output, ctx)
            else:
                yield output  # a side output (errors)


def _to_flink(kind: ColumnKind, value):
    if kind is ColumnKind.TIMESTAMP_MS:
        # Naive UTC: the job's JVM and Python workers run with UTC as their zone.
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc).replace(tzinfo=None)
    return value


def audit_row(values: list, include_audio: bool) -> Row:
    columns = audit_columns(include_audio)
    return Row(*(_to_flink(c.kind, v) for c, v in zip(columns, values)))
