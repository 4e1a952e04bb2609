"""Records that cross process boundaries (DESIGN §4): ContactEvent and AudioFrame.

Both are versioned; a reader rejects an unknown version with a clear error rather than
guessing. The codecs are pure functions over bytes so the connector, the Flink job and
the tests share one definition.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CONTACT_EVENT_SCHEMA = "contact-event/1"

#: Bounded so one malformed or hostile event cannot blow up keyed state.
MAX_ATTRIBUTES_BYTES = 32 * 1024
MAX_CONTACT_ID_BYTES = 128
#: KVS fragment numbers are decimal strings of up to 48 digits.
MAX_FRAGMENT_NUMBER_LENGTH = 64


class RecordError(ValueError):
    """A record that cannot be decoded. ``reason`` is a short stable code for metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class Track(enum.IntEnum):
    """Audio direction, named from the customer's side as Connect names its tracks."""

    CUSTOMER = 0  # AUDIO_FROM_CUSTOMER
    AGENT = 1  # AUDIO_TO_CUSTOMER

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> "Track":
        try:
            return cls[label.upper()]
        except KeyError:
            raise RecordError("bad_track", f"unknown track {label!r}") from None


class EventType(str, enum.Enum):
    STARTED = "STARTED"
    ATTRIBUTES_UPDATED = "ATTRIBUTES_UPDATED"
    ENDED = "ENDED"


@dataclass(frozen=True)
class ContactEvent:
    """A contact's lifecycle event on the ``contact-events`` stream (JSON)."""

    type: EventType
    contact_id: str
    event_time_ms: int
    instance_id: str = ""
    stream_arn: str = ""
    start_fragment_number: str = ""
    start_timestamp_ms: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    agent_id: str = ""
    queue_name: str = ""
    initiation_method: str = ""
    previous_contact_id: str = ""

    def encode(self) -> bytes:
        body = {
            "schema": CONTACT_EVENT_SCHEMA,
            "type": self.type.value,
            "contact_id": self.contact_id,
            "instance_id": self.instance_id,
            "event_time_ms": self.event_time_ms,
            "stream_arn": self.stream_arn,
            "start_fragment_number": self.start_fragment_number,
            "start_timestamp_ms": self.start_timestamp_ms,
            "attributes": self.attributes,
            "agent_id": self.agent_id,
            "queue_name": self.queue_name,
            "initiation_method": self.initiation_method,
            "previous_contact_id": self.previous_contact_id,
        }
        data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        _check_attributes_size(self.attributes)
        return data

    @classmethod
    def decode(cls, data: bytes | str) -> "ContactEvent":
        body = _json_object(data, "malformed_event")
        schema = body.get("schema")
        if schema != CONTACT_EVENT_SCHEMA:
            raise RecordError(
                "unknown_version",
                f"contact event schema {schema!r}, this reader knows {CONTACT_EVENT_SCHEMA!r}",
            )
        fields = _Fields(body, "malformed_event")
        try:
            event_type = EventType(body.get("type"))
        except ValueError:
            raise RecordError("malformed_event", f"unknown event type {body.get('type')!r}") from None
        contact_id = fields.text("contact_id", required=True)
        if len(contact_id.encode()) > MAX_CONTACT_ID_BYTES:
            raise RecordError("malformed_event", "contact_id too long")
        attributes = body.get("attributes")
        if attributes is None:
            attributes = {}
        if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise RecordError("malformed_event", "attributes must map strings to strings")
        for key, value in attributes.items():
            _utf8(key, "malformed_event", "attribute name")
            _utf8(value, "malformed_event", f"attribute {key!r}")
        _check_attributes_size(attributes)
        return cls(
            type=event_type,
            contact_id=contact_id,
            event_time_ms=fields.integer("event_time_ms"),
            instance_id=fields.text("instance_id"),
            stream_arn=fields.text("stream_arn"),
            start_fragment_number=fields.text("start_fragment_number"),
            start_timestamp_ms=fields.integer("start_timestamp_ms"),
            attributes=dict(attributes),
            agent_id=fields.text("agent_id"),
            queue_name=fields.text("queue_name"),
            initiation_method=fields.text("initiation_method"),
            previous_contact_id=fields.text("previous_contact_id"),
        )


def _json_object(data: bytes | str, reason: str) -> dict:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(reason, f"not JSON: {exc}") from None
    except RecursionError:
        raise RecordError(reason, "JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise RecordError(reason, "not a JSON object")
    return body


def _utf8(value: str, reason: str, what: str) -> str:
    # JSON may carry lone surrogates (\ud800) that no UTF-8 writer downstream accepts.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise RecordError(reason, f"{what} is not valid Unicode") from None
    return value


class _Fields:
    """Typed, strict access to a decoded JSON object's fields: no silent coercion."""

    def __init__(self, body: dict, reason: str) -> None:
        self.body = body
        self.reason = reason

    def text(self, name: str, required: bool = False) -> str:
        value = self.body.get(name)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value):
            raise RecordError(self.reason, f"{name} must be a non-empty string" if required else f"{name} must be a string")
        return _utf8(value, self.reason, name)

    def integer(self, name: str) -> int:
        value = self.body.get(name)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(self.reason, f"{name} must be an integer, got {value!r}")
        return value


def _check_attributes_size(attributes: dict[str, str]) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
    if size > MAX_ATTRIBUTES_BYTES:
        raise RecordError(
            "oversized_attributes", f"attributes are {size} bytes, limit {MAX_ATTRIBUTES_BYTES}"
        )


# --- AudioFrame -------------------------------------------------------------------------

AUDIO_FRAME_MAGIC = b"CXAF"
AUDIO_FRAME_VERSION = 1


class FrameKind(enum.IntEnum):
    FRAME = 1
    END = 2


# magic, version, kind, track, frame_index, producer_timestamp_ms, sample_rate,
# sample_count, then two length-prefixed strings (contact_id, fragment_number).
_HEADER = struct.Struct(">4sBBBIqII")
#: ASCII digits only (str.isdigit would accept other scripts' digits); empty on an END
#: record of a contact that had no fragment.
_FRAGMENT_NUMBER = re.compile(r"[0-9]{0,64}")
_END_TOTALS = struct.Struct(">QQII")


@dataclass(frozen=True)
class AudioFrame:
    """One KVS block of one track of one contact, as PCM16LE.

    Unique key: (contact_id, fragment_number, track, frame_index).
    """

    contact_id: str
    track: Track
    fragment_number: str
    frame_index: int
    producer_timestamp_ms: int
    sample_rate: int
    pcm: bytes

    @property
    def sample_count(self) -> int:
        return len(self.pcm) // 2

    def encode(self) -> bytes:
        if len(self.pcm) % 2:
            raise RecordError("bad_pcm", "PCM16 payload has an odd number of bytes")
        return (
            _HEADER.pack(
                AUDIO_FRAME_MAGIC,
                AUDIO_FRAME_VERSION,
                FrameKind.FRAME,
                self.track,
                self.frame_index,
                self.producer_timestamp_ms,
                self.sample_rate,
                self.sample_count,
            )
            + _pack_str(self.contact_id, MAX_CONTACT_ID_BYTES)
            + _pack_str(self.fragment_number, MAX_FRAGMENT_NUMBER_LENGTH)
            + self.pcm
        )


@dataclass(frozen=True)
class AudioEnd:
    """Marks a contact's last frame on ``audio-frames`` with per-track totals."""

    contact_id: str
    last_fragment_number: str
    producer_timestamp_ms: int
    customer_samples: int
    agent_samples: int
    customer_frames: int
    agent_frames: int
    reason: str = ""

    def samples(self, track: Track) -> int:
        return self.customer_samples if track is Track.CUSTOMER else self.agent_samples

    @classmethod
    def from_totals(
        cls,
        contact_id: str,
        last_fragment_number: str,
        producer_timestamp_ms: int,
        samples: Mapping[Track, int],
        frames: Mapping[Track, int],
        reason: str = "",
    ) -> "AudioEnd":
        return cls(
            contact_id=contact_id,
            last_fragment_number=last_fragment_number,
            producer_timestamp_ms=producer_timestamp_ms,
            customer_samples=samples.get(Track.CUSTOMER, 0),
            agent_samples=samples.get(Track.AGENT, 0),
            customer_frames=frames.get(Track.CUSTOMER, 0),
            agent_frames=frames.get(Track.AGENT, 0),
            reason=reason,
        )

    def encode(self) -> bytes:
        return (
            _HEADER.pack(
                AUDIO_FRAME_MAGIC,
                AUDIO_FRAME_VERSION,
                FrameKind.END,
                0,
                0,
                self.producer_timestamp_ms,
                0,
                0,
            )
            + _pack_str(self.contact_id, MAX_CONTACT_ID_BYTES)
            + _pack_str(self.last_fragment_number, MAX_FRAGMENT_NUMBER_LENGTH)
            + _END_TOTALS.pack(
                self.customer_samples, self.agent_samples, self.customer_frames, self.agent_frames
            )
            + _pack_str(self.reason, 255)
        )


def decode_audio_record(data: bytes) -> AudioFrame | AudioEnd:
    """Decode one record of the ``audio-frames`` stream."""
    if len(data) < _HEADER.size:
        raise RecordError("truncated", f"record of {len(data)} bytes is shorter than the header")
    magic, version, kind, track, frame_index, ts, rate, count = _HEADER.unpack_from(data)
    if magic != AUDIO_FRAME_MAGIC:
        raise RecordError("bad_magic", f"magic {magic!r}, expected {AUDIO_FRAME_MAGIC!r}")
    if version != AUDIO_FRAME_VERSION:
        raise RecordError(
            "unknown_version", f"audio frame version {version}, this reader knows {AUDIO_FRAME_VERSION}"
        )
    offset = _HEADER.size
    contact_id, offset = _unpack_str(data, offset)
    fragment_number, offset = _unpack_str(data, offset)
    if not contact_id:
        raise RecordError("bad_contact_id", "empty contact_id")
    if not _FRAGMENT_NUMBER.fullmatch(fragment_number):
        raise RecordError("bad_fragment_number", f"fragment number {fragment_number[:64]!r} is not decimal")
    if kind == FrameKind.FRAME:
        try:
            track_value = Track(track)
        except ValueError:
            raise RecordError("bad_track", f"unknown track code {track}") from None
        pcm = data[offset:]
        if len(pcm) != count * 2:
            raise RecordError(
                "bad_length", f"header says {count} samples, payload has {len(pcm)} bytes"
            )
        if rate <= 0:
            raise RecordError("bad_sample_rate", f"sample rate {rate}")
        return AudioFrame(contact_id, track_value, fragment_number, frame_index, ts, rate, pcm)
    if kind == FrameKind.END:
        if len(data) < offset + _END_TOTALS.size:
            raise RecordError("truncated", "END record without totals")
        cs, ags, cf, af = _END_TOTALS.unpack_from(data, offset)
        reason, _ = _unpack_str(data, offset + _END_TOTALS.size)
        return AudioEnd(contact_id, fragment_number, ts, cs, ags, cf, af, reason)
    raise RecordError("bad_kind", f"unknown record kind {kind}")


# --- Frame batches ----------------------------------------------------------------------
#
# One KDS record per KVS block made a contact's 1 s fragment 32 records, and a producer
# that keeps one record per contact in flight (the only way PutRecords keeps a contact's
# order through partial failures) then needed 32 round trips per fragment. A batch
# carries consecutive AudioFrames of one contact in one record; each frame inside keeps
# its own unique key, so dedupe downstream is unchanged.

AUDIO_BATCH_MAGIC = b"CXAB"
AUDIO_BATCH_VERSION = 1
#: KDS caps a record (data + partition key) at 1 MiB; stay well below it.
MAX_BATCH_BYTES = 768 * 1024
_BATCH_HEADER = struct.Struct(">4sBH")
_ITEM_LENGTH = struct.Struct(">I")


def encode_frame_batches(frames: Sequence[AudioFrame], max_bytes: int = MAX_BATCH_BYTES) -> list[bytes]:
    """Consecutive frames of one contact in as few records as ``max_bytes`` allows."""
    batches: list[bytes] = []
    items: list[bytes] = []
    size = _BATCH_HEADER.size
    for frame in frames:
        item = frame.encode()
        item_size = _ITEM_LENGTH.size + len(item)
        if items and (size + item_size > max_bytes or len(items) == 0xFFFF):
            batches.append(_pack_batch(items))
            items, size = [], _BATCH_HEADER.size
        items.append(item)
        size += item_size
    if items:
        batches.append(_pack_batch(items))
    return batches


def _pack_batch(items: list[bytes]) -> bytes:
    parts = [_BATCH_HEADER.pack(AUDIO_BATCH_MAGIC, AUDIO_BATCH_VERSION, len(items))]
    for item in items:
        parts += [_ITEM_LENGTH.pack(len(item)), item]
    return b"".join(parts)


def decode_audio_records(data: bytes) -> list[AudioFrame | AudioEnd]:
    """Decode one record of the ``audio-frames`` stream: a single record or a frame batch."""
    if data[:4] != AUDIO_BATCH_MAGIC:
        return [decode_audio_record(data)]
    if len(data) < _BATCH_HEADER.size:
        raise RecordError("truncated", "frame batch shorter than its header")
    _, version, count = _BATCH_HEADER.unpack_from(data)
    if version != AUDIO_BATCH_VERSION:
        raise RecordError("unknown_version", f"frame batch version {version}, this reader knows {AUDIO_BATCH_VERSION}")
    offset = _BATCH_HEADER.size
    frames: list[AudioFrame | AudioEnd] = []
    for _ in range(count):
        if offset + _ITEM_LENGTH.size > len(data):
            raise RecordError("truncated", "frame batch ends inside an item length")
        (length,) = _ITEM_LENGTH.unpack_from(data, offset)
        offset += _ITEM_LENGTH.size
        if offset + length > len(data):
            raise RecordError("truncated", "frame batch ends inside a frame")
        frame = decode_audio_record(data[offset : offset + length])
        if not isinstance(frame, AudioFrame):
            raise RecordError("bad_batch", "a frame batch may hold only FRAME records")
        frames.append(frame)
        offset += length
    if offset != len(data):
        raise RecordError("bad_length", f"{len(data) - offset} bytes after the last frame of the batch")
    if len({frame.contact_id for frame in frames}) > 1:
        raise RecordError("bad_batch", "a frame batch may hold only one contact's frames")
    return frames


def _pack_str(value: str, limit: int) -> bytes:
    raw = value.encode()
    if len(raw) > limit:
        raise RecordError("too_long", f"{value[:32]!r}… is longer than {limit} bytes")
    return bytes([len(raw)]) + raw


def _unpack_str(data: bytes, offset: int) -> tuple[str, int]:
    if offset >= len(data):
        raise RecordError("truncated", "record ends inside its header")
    n = data[offset]
    end = offset + 1 + n
    if end > len(data):
        raise RecordError("truncated", "record ends inside its header")
    try:
        return data[offset + 1 : end].decode(), end
    except UnicodeDecodeError:
        raise RecordError("bad_string", "header string is not UTF-8") from None


# --- ContactWork ------------------------------------------------------------------------

CONTACT_WORK_SCHEMA = "contact-work/1"


@dataclass(frozen=True)
class ContactWork:
    """One contact for a KVS connector worker to read (the connector queue's message body)."""

    contact_id: str
    stream_arn: str
    start_fragment_number: str
    instance_id: str = ""
    start_timestamp_ms: int = 0

    def encode(self) -> str:
        return json.dumps(
            {
                "schema": CONTACT_WORK_SCHEMA,
                "contact_id": self.contact_id,
                "stream_arn": self.stream_arn,
                "start_fragment_number": self.start_fragment_number,
                "instance_id": self.instance_id,
                "start_timestamp_ms": self.start_timestamp_ms,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def decode(cls, data: str | bytes) -> "ContactWork":
        body = _json_object(data, "malformed_work")
        if body.get("schema") != CONTACT_WORK_SCHEMA:
            raise RecordError("unknown_version", f"work item schema is not {CONTACT_WORK_SCHEMA!r}")
        fields = _Fields(body, "malformed_work")
        return cls(
            contact_id=fields.text("contact_id", required=True),
            stream_arn=fields.text("stream_arn", required=True),
            start_fragment_number=fields.text("start_fragment_number"),
            instance_id=fields.text("instance_id"),
            start_timestamp_ms=fields.integer("start_timestamp_ms"),
        )
