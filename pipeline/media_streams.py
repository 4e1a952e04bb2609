"""Twilio Media Streams protocol core, with no I/O: both the sending and the receiving side.

Cresta's public real-time voice ingest is a Twilio Media Streams WebSocket (its Twilio Flex
integration); this project plays Twilio's part. Messages are JSON text frames: ``connected``,
``start``, one ``media`` per 20 ms of μ-law audio per track, then ``stop``. This module
turns audio into those texts (``MediaStreamsSender``) and checks texts strictly
(``MediaStreamsReceiver``); moving them over a socket is the adapters' job.

Track mapping, fixed for every contact and sent with ``ParticipantMode`` ``"agent"`` (the
stream follows the agent, as in Cresta's Flex integration):

============================================  ================
Amazon Connect track                          Media Streams
============================================  ================
customer (``AUDIO_FROM_CUSTOMER``)            ``"inbound"``
agent (``AUDIO_TO_CUSTOMER``)                 ``"outbound"``
============================================  ================

Numbering follows Twilio's message documentation: ``connected`` carries no
``sequenceNumber``; ``start`` is ``"1"`` and every later message adds one. ``chunk`` counts
each track's media messages from ``"1"``; ``timestamp`` is the position of the frame's
first sample in milliseconds since the stream started. All three are decimal strings.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Union

from pipeline.audio import MULAW_SILENCE, pcm16_to_mulaw
from pipeline.records import Track
from pipeline.stream_fields import (
    FieldError,
    custom_parameters_field,
    decimal_field,
    json_object,
    object_field,
    same_types,
    string_field,
    token_violation,
)

SAMPLE_RATE = 8000
FRAME_MS = 20
#: One 20 ms frame of 8 kHz μ-law: one byte per sample.
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000
MEDIA_ENCODING = "audio/x-mulaw"
MEDIA_FORMAT: Mapping[str, Any] = MappingProxyType(
    {"encoding": MEDIA_ENCODING, "sampleRate": SAMPLE_RATE, "channels": 1}
)
PROTOCOL = "Call"
PROTOCOL_VERSION = "1.0.0"
TWILIO_TRACKS = ("inbound", "outbound")
TWILIO_TRACK_OF: Mapping[Track, str] = MappingProxyType(
    {Track.CUSTOMER: "inbound", Track.AGENT: "outbound"}
)


class MediaStreamsStateError(RuntimeError):
    """A sender method called out of order (media before start, anything after stop)."""


def _to_json(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _as_track(track: Track | str) -> Track:
    return track if isinstance(track, Track) else Track.from_label(track)


class MediaStreamsSender:
    """Builds the messages of one Media Stream (one WebSocket connection) for one contact.

    Audio goes in as PCM16LE at 8 kHz in chunks of any length; it leaves as 160-byte
    μ-law frames. A partial frame at the end of a call waits, per track, for the next call
    of ``media_messages`` and is padded with μ-law silence only by ``flush_messages``.

    >>> sender = MediaStreamsSender("MZ" + "0" * 32, "AC1", "contact-1", {})
    >>> [json.loads(m)["event"] for m in sender.start_messages()]
    ['connected', 'start']
    >>> len(sender.media_messages("customer", bytes(500)))  # 250 samples: one frame, 90 left
    1
    >>> [json.loads(m)["event"] for m in sender.stop_messages()]
    ['media', 'stop']
    """

    def __init__(
        self, stream_sid: str, account_sid: str, call_sid: str, custom_parameters: dict[str, str]
    ) -> None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in custom_parameters.items()):
            raise TypeError("custom parameters must map strings to strings")
        self.stream_sid = stream_sid
        self.account_sid = account_sid
        self.call_sid = call_sid
        self.custom_parameters = dict(custom_parameters)
        self._sequence_number = 0
        self._started = False
        self._stopped = False
        self._pending: dict[Track, bytearray] = {track: bytearray() for track in Track}
        self._chunks_sent: dict[Track, int] = {track: 0 for track in Track}

    def start_messages(self) -> list[str]:
        """The ``connected`` and ``start`` messages; call once, first."""
        if self._started:
            raise MediaStreamsStateError("start_messages() was already called")
        self._started = True
        connected = {"event": "connected", "protocol": PROTOCOL, "version": PROTOCOL_VERSION}
        start = self._numbered("start")
        start["start"] = {
            "accountSid": self.account_sid,
            "callSid": self.call_sid,
            "streamSid": self.stream_sid,
            "tracks": list(TWILIO_TRACKS),
            "customParameters": dict(self.custom_parameters),
            "mediaFormat": dict(MEDIA_FORMAT),
        }
        return [_to_json(connected), _to_json(start)]

    def media_messages(self, track: Track | str, pcm16: bytes) -> list[str]:
        """``media`` messages for every whole 20 ms frame now available on ``track``.

        ``track`` is ``"customer"`` or ``"agent"`` (or a ``Track``); ``pcm16`` is PCM16LE
        at 8 kHz and must hold whole samples.
        """
        track = _as_track(track)
        self._require_streaming()
        pending = self._pending[track]
        pending += pcm16_to_mulaw(pcm16)
        whole = len(pending) - len(pending) % FRAME_BYTES
        messages = [
            self._media(track, bytes(pending[offset : offset + FRAME_BYTES]))
            for offset in range(0, whole, FRAME_BYTES)
        ]
        del pending[:whole]
        return messages

    def flush_messages(self, track: Track | str) -> list[str]:
        """The track's partial frame, padded with μ-law silence to 20 ms, if there is one."""
        track = _as_track(track)
        self._require_streaming()
        pending = self._pending[track]
        if not pending:
            return []
        frame = bytes(pending) + bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(pending))
        pending.clear()
        return [self._media(track, frame)]

    def stop_messages(self) -> list[str]:
        """Both tracks' partial frames, then ``stop``; nothing may be sent afterwards."""
        messages = self.flush_messages(Track.CUSTOMER) + self.flush_messages(Track.AGENT)
        stop = self._numbered("stop")
        stop["stop"] = {"accountSid": self.account_sid, "callSid": self.call_sid}
        self._stopped = True
        return messages + [_to_json(stop)]

    def pending_bytes(self, track: Track | str) -> int:
        """μ-law bytes (samples) of ``track`` waiting for a whole frame."""
        return len(self._pending[_as_track(track)])

    def _require_streaming(self) -> None:
        if not self._started:
            raise MediaStreamsStateError("media before start_messages()")
        if self._stopped:
            raise MediaStreamsStateError("the stream was already stopped")

    def _numbered(self, event: str) -> dict[str, Any]:
        self._sequence_number += 1
        return {
            "event": event,
            "sequenceNumber": str(self._sequence_number),
            "streamSid": self.stream_sid,
        }

    def _media(self, track: Track, frame: bytes) -> str:
        chunk_index = self._chunks_sent[track]
        self._chunks_sent[track] = chunk_index + 1
        message = self._numbered("media")
        message["media"] = {
            "track": TWILIO_TRACK_OF[track],
            "chunk": str(chunk_index + 1),
            "timestamp": str(chunk_index * FRAME_MS),
            "payload": base64.b64encode(frame).decode("ascii"),
        }
        return _to_json(message)


# --- receiving side --------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: dict[str, Any]


@dataclass(frozen=True)
class Media:
    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True)
class Dtmf:
    sequence_number: int
    stream_sid: str
    track: str
    digit: str


@dataclass(frozen=True)
class Mark:
    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True)
class Stop:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


ReceivedEvent = Union[Connected, Start, Media, Dtmf, Mark, Stop]


class ReceiverState(enum.Enum):
    AWAIT_CONNECTED = "awaiting connected"
    AWAIT_START = "awaiting start"
    STREAMING = "streaming"
    STOPPED = "stopped"


_S = ReceiverState
#: Every (state, event) pair and where it leads, with whether the protocol allows it. A
#: disallowed event is still applied where that keeps later checks meaningful (a ``start``
#: without ``connected`` still starts the stream); nothing else changes the state.
_TRANSITIONS: dict[tuple[ReceiverState, str], tuple[ReceiverState, bool]] = {
    (_S.AWAIT_CONNECTED, "connected"): (_S.AWAIT_START, True),
    (_S.AWAIT_CONNECTED, "start"): (_S.STREAMING, False),
    (_S.AWAIT_CONNECTED, "media"): (_S.AWAIT_CONNECTED, False),
    (_S.AWAIT_CONNECTED, "dtmf"): (_S.AWAIT_CONNECTED, False),
    (_S.AWAIT_CONNECTED, "mark"): (_S.AWAIT_CONNECTED, False),
    (_S.AWAIT_CONNECTED, "stop"): (_S.STOPPED, False),
    (_S.AWAIT_START, "connected"): (_S.AWAIT_START, False),
    (_S.AWAIT_START, "start"): (_S.STREAMING, True),
    (_S.AWAIT_START, "media"): (_S.AWAIT_START, False),
    (_S.AWAIT_START, "dtmf"): (_S.AWAIT_START, False),
    (_S.AWAIT_START, "mark"): (_S.AWAIT_START, False),
    (_S.AWAIT_START, "stop"): (_S.STOPPED, False),
    (_S.STREAMING, "connected"): (_S.STREAMING, False),
    (_S.STREAMING, "start"): (_S.STREAMING, False),
    (_S.STREAMING, "media"): (_S.STREAMING, True),
    (_S.STREAMING, "dtmf"): (_S.STREAMING, True),
    (_S.STREAMING, "mark"): (_S.STREAMING, True),
    (_S.STREAMING, "stop"): (_S.STOPPED, True),
}


@dataclass
class _TrackProgress:
    audio: bytearray = field(default_factory=bytearray)
    last_chunk: int = 0
    last_timestamp_ms: int | None = None


class MediaStreamsReceiver:
    """Strict checker for the receiving end of one Media Stream (one WebSocket connection).

    Feed each text frame to ``receive_text``; it returns the events it could read and
    records every breach of the protocol in ``violations`` instead of raising, so one bad
    message never hides the next. A message that cannot be read at all (not JSON, a
    missing or mistyped field, bad base64, after ``stop``) is dropped; a readable message
    that breaks a rule about sizes or numbering is reported and still delivered, and its
    audio kept, so what was received can be inspected exactly as it came.

    Violation texts never quote the expected or received ``Token``.
    """

    def __init__(self, expected_token: str | None) -> None:
        self._expected_token = expected_token
        self.state = ReceiverState.AWAIT_CONNECTED
        self.violations: list[str] = []
        self.start: Start | None = None
        self.media_count = 0
        self._messages_seen = 0
        self._last_sequence_number = 0
        self._tracks: dict[str, _TrackProgress] = {name: _TrackProgress() for name in TWILIO_TRACKS}

    @property
    def stopped(self) -> bool:
        return self.state is ReceiverState.STOPPED

    @property
    def call_sid(self) -> str | None:
        return self.start.call_sid if self.start else None

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start else None

    @property
    def custom_parameters(self) -> dict[str, str]:
        return dict(self.start.custom_parameters) if self.start else {}

    def audio(self, track: str) -> bytes:
        """μ-law received on ``"inbound"`` or ``"outbound"``, in order of arrival."""
        return bytes(self._tracks[track].audio)

    def receive_bytes(self, data: bytes) -> list[ReceivedEvent]:
        """A binary WebSocket frame: never valid here, since every message is JSON text."""
        self._messages_seen += 1
        self._violation(f"binary frame of {len(data)} bytes; Media Streams messages are JSON text")
        return []

    def receive_text(self, text: str) -> list[ReceivedEvent]:
        self._messages_seen += 1
        if self.state is ReceiverState.STOPPED:
            self._violation("message after stop")
            return []
        try:
            message = json_object(text)
        except FieldError as exc:
            self._violation(str(exc))
            return []
        event_name = message.get("event")
        if not isinstance(event_name, str):
            self._violation("'event' is missing or not a string")
            return []
        parse = self._PARSERS.get(event_name)
        if parse is None:
            self._violation(f"unknown event {event_name!r}")
            return []
        next_state, allowed = _TRANSITIONS[(self.state, event_name)]
        if not allowed:
            self._violation(f"{event_name!r} received while {self.state.value}")
        try:
            event = parse(self, message)
        except FieldError as exc:
            self._violation(f"{event_name}: {exc}")
            return []
        self.state = next_state
        return [event]

    # Each parser validates one event type, records rule breaches that still leave the
    # message usable, and raises FieldError when it cannot be used.

    def _parse_connected(self, message: dict[str, Any]) -> Connected:
        protocol = string_field(message, "protocol")
        version = string_field(message, "version")
        if protocol != PROTOCOL:
            self._violation(f"connected: protocol is {protocol!r}, expected {PROTOCOL!r}")
        return Connected(protocol, version)

    def _parse_start(self, message: dict[str, Any]) -> Start:
        sequence_number = self._sequence_number(message)
        stream_sid = string_field(message, "streamSid", non_empty=True)
        body = object_field(message, "start")
        start = Start(
            sequence_number=sequence_number,
            stream_sid=stream_sid,
            account_sid=string_field(body, "accountSid", prefix="start."),
            call_sid=string_field(body, "callSid", prefix="start.", non_empty=True),
            tracks=_tracks(body),
            custom_parameters=custom_parameters_field(body),
            media_format=object_field(body, "mediaFormat", prefix="start."),
        )
        inner_sid = string_field(body, "streamSid", prefix="start.")
        if inner_sid != stream_sid:
            self._violation("start: start.streamSid differs from streamSid")
        if not same_types(start.media_format, MEDIA_FORMAT):
            self._violation(
                f"start: mediaFormat is {start.media_format!r}, expected {dict(MEDIA_FORMAT)!r}"
            )
        token_problem = token_violation(start.custom_parameters, self._expected_token)
        if token_problem:
            self._violation(f"start: {token_problem}")
        if self.start is None:
            self.start = start
        return start

    def _parse_media(self, message: dict[str, Any]) -> Media:
        sequence_number = self._sequence_number(message)
        stream_sid = self._stream_sid(message)
        body = object_field(message, "media")
        track = string_field(body, "track", prefix="media.")
        if track not in self._tracks:
            raise FieldError(f"media.track is {track!r}, expected one of {list(TWILIO_TRACKS)}")
        chunk = decimal_field(body, "chunk", prefix="media.")
        timestamp_ms = decimal_field(body, "timestamp", prefix="media.")
        encoded = string_field(body, "payload", prefix="media.")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise FieldError("media.payload is not valid base64") from None
        if self.start is not None and track not in self.start.tracks:
            self._violation(f"media: track {track!r} was not announced in start.tracks")
        if len(payload) != FRAME_BYTES:
            self._violation(
                f"media: payload on {track} chunk {chunk} is {len(payload)} bytes, "
                f"expected {FRAME_BYTES} (20 ms of 8 kHz μ-law)"
            )
        progress = self._tracks[track]
        if chunk != progress.last_chunk + 1:
            self._violation(
                f"media: chunk {chunk} on {track} follows chunk {progress.last_chunk} "
                f"(expected {progress.last_chunk + 1})"
            )
        if progress.last_timestamp_ms is not None and timestamp_ms <= progress.last_timestamp_ms:
            self._violation(
                f"media: timestamp {timestamp_ms} on {track} does not increase "
                f"(previous {progress.last_timestamp_ms})"
            )
        progress.last_chunk = chunk
        progress.last_timestamp_ms = timestamp_ms
        progress.audio += payload
        self.media_count += 1
        return Media(sequence_number, stream_sid, track, chunk, timestamp_ms, payload)

    def _parse_dtmf(self, message: dict[str, Any]) -> Dtmf:
        sequence_number = self._sequence_number(message)
        stream_sid = self._stream_sid(message)
        body = object_field(message, "dtmf")
        return Dtmf(
            sequence_number,
            stream_sid,
            string_field(body, "track", prefix="dtmf."),
            string_field(body, "digit", prefix="dtmf.", non_empty=True),
        )

    def _parse_mark(self, message: dict[str, Any]) -> Mark:
        sequence_number = self._sequence_number(message)
        stream_sid = self._stream_sid(message)
        body = object_field(message, "mark")
        return Mark(sequence_number, stream_sid, string_field(body, "name", prefix="mark."))

    def _parse_stop(self, message: dict[str, Any]) -> Stop:
        sequence_number = self._sequence_number(message)
        stream_sid = self._stream_sid(message)
        body = object_field(message, "stop")
        stop = Stop(
            sequence_number,
            stream_sid,
            string_field(body, "accountSid", prefix="stop."),
            string_field(body, "callSid", prefix="stop."),
        )
        if self.start is not None and (
            stop.account_sid != self.start.account_sid or stop.call_sid != self.start.call_sid
        ):
            self._violation("stop: accountSid/callSid differ from those in start")
        return stop

    _PARSERS = {
        "connected": _parse_connected,
        "start": _parse_start,
        "media": _parse_media,
        "dtmf": _parse_dtmf,
        "mark": _parse_mark,
        "stop": _parse_stop,
    }

    def _sequence_number(self, message: dict[str, Any]) -> int:
        value = decimal_field(message, "sequenceNumber")
        expected = self._last_sequence_number + 1
        if value != expected:
            self._violation(
                f"sequenceNumber {value} follows {self._last_sequence_number} (expected {expected})"
            )
        self._last_sequence_number = value
        return value

    def _stream_sid(self, message: dict[str, Any]) -> str:
        stream_sid = string_field(message, "streamSid", non_empty=True)
        if self.start is not None and stream_sid != self.start.stream_sid:
            self._violation(f"streamSid {stream_sid!r} differs from the started stream's")
        return stream_sid

    def _violation(self, text: str) -> None:
        self.violations.append(f"message {self._messages_seen}: {text}")


def _tracks(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("tracks")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(track, str) and track in TWILIO_TRACKS for track in value)
    ):
        raise FieldError(f"start.tracks is {value!r}, expected a list from {list(TWILIO_TRACKS)}")
    return tuple(value)
