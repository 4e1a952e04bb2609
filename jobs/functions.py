"""Flink functions: thin adapters between Flink's APIs and the ``pipeline`` state machines."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from pyflink.common import Row
from pyflink.common.typeinfo import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.functions import FlatMapFunction
from pyflink.datastream.state import ValueStateDescriptor

from pipeline.assembler import AudioChunk, CompletenessMismatch, ContactAudioAssembler, ContactClosed
from pipeline.audit import ColumnKind, audit_columns, audit_values
from pipeline.config import PipelineConfig
from pipeline.records import AudioEnd, AudioFrame, ContactEvent, RecordError, decode_audio_record

log = logging.getLogger(__name__)

#: Tags on the unified keyed stream: (tag, contact_id, decoded record).
AUDIO = "audio"
EVENT = "event"


def _now_ms() -> int:
    return int(time.time() * 1000)


def decode_audio(data: bytes) -> Iterable[tuple[str, str, object]]:
    try:
        record = decode_audio_record(bytes(data))
    except RecordError as exc:
        log.warning("dropped invalid audio record (%s)", exc)
        return []
    return [(AUDIO, record.contact_id, record)]


def decode_event(data: bytes) -> Iterable[tuple[str, str, object]]:
    try:
        event = ContactEvent.decode(bytes(data))
    except RecordError as exc:
        log.warning("dropped invalid contact event (%s)", exc)
        return []
    return [(EVENT, event.contact_id, event)]


class ContactAssemblerFunction(KeyedProcessFunction):
    """Keyed by ContactId; keeps one ``ContactAudioAssembler`` per contact in state."""

    def __init__(self, config: PipelineConfig) -> None:
        self.chunk_ms = config["assembler.chunk_ms"]
        self.enrich_max_wait_ms = config["enrich.max_wait_ms"]
        self.ready_file = config["job.ready_file"]
        self.state = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(
            ValueStateDescriptor("contact-assembler", Types.PICKLED_BYTE_ARRAY())
        )
        if self.ready_file:
            Path(self.ready_file).touch()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        tag, contact_id, record = value
        assembler = self.state.value() or ContactAudioAssembler(
            contact_id, self.chunk_ms, self.enrich_max_wait_ms
        )
        now = _now_ms()
        if tag == EVENT:
            outputs = assembler.on_event(record, now)
        elif isinstance(record, AudioEnd):
            outputs = assembler.on_end(record, now)
        elif isinstance(record, AudioFrame):
            outputs = assembler.on_frame(record, now)
        else:
            outputs = []
        yield from self._emit(assembler, outputs, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        assembler = self.state.value()
        if assembler is not None:
            yield from self._emit(assembler, assembler.on_timer(_now_ms()), ctx)

    def _emit(self, assembler: ContactAudioAssembler, outputs, ctx):
        self.state.update(assembler)
        timer = assembler.next_timer_ms()
        if timer is not None:
            ctx.timer_service().register_processing_time_timer(timer)
        for output in outputs:
            if isinstance(output, CompletenessMismatch):
                log.error(
                    "contact %s track %s incomplete: END says %d samples, assembled %d",
                    output.contact_id, output.track.label, output.expected_samples, output.assembled_samples,
                )
                continue
            yield output


class CrestaDeliveryFunction(FlatMapFunction):
    """Sends each chunk to Cresta and turns it into its audit row."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.include_audio = config["audit.include_audio"]
        self.delivery = None

    def open(self, runtime_context: RuntimeContext) -> None:
        from connectors.cresta.delivery import CrestaDelivery

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
            yield audit_row(audit_values(value, receipt, self.include_audio), self.include_audio)


def _to_flink(kind: ColumnKind, value):
    if kind is ColumnKind.TIMESTAMP_MS:
        # Naive UTC: the job's JVM and Python workers run with UTC as their zone.
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc).replace(tzinfo=None)
    return value


def audit_row(values: list, include_audio: bool) -> Row:
    columns = audit_columns(include_audio)
    return Row(*(_to_flink(c.kind, v) for c, v in zip(columns, values)))
