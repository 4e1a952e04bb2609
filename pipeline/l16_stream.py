"""The L16 stream protocol, with no I/O: raw PCM frames for an ingest that takes linear audio.

Cresta has not published such an endpoint; this protocol exists to show that a second wire
format plugs into the delivery service without touching the job, and to send Connect's
audio without μ-law's loss where a receiver accepts that. One WebSocket per contact:

1. A JSON text frame ``start``, shaped like Media Streams' ``start`` (so the same custom
   parameters and track names apply) with its own ``protocol`` and ``mediaFormat``::

       {"event": "start", "protocol": "cresta-l16", "version": "1",
        "start": {"accountSid": …, "callSid": <ContactId>, "streamSid": …,
                  "tracks": ["inbound", "outbound"], "customParameters": {…},
                  "mediaFormat": {"encoding": "audio/L16", "sampleRate": 8000,
                                  "channels": 1, "byteOrder": "little-endian"}}}

2. One binary frame per piece of audio: a 14-byte little-endian header, then the PCM.

   ======  ======  ====================================================================
   offset  size    field
   ======  ======  ====================================================================
   0       4       magic ``b"CL16"``
   4       1       version, 1
   5       1       track: 0 = ``inbound`` (customer), 1 = ``outbound`` (agent)
   6       4       sequence number of the frame in the stream, from 1, over both tracks
   10      4       sample offset: samples of this track sent before this frame
   14      2·n     n samples of 16-bit signed little-endian PCM, 1 ≤ n ≤ 8000 (1 s)
   ======  ======  ====================================================================

   Little-endian, not RFC 3551's network order, because that is how Connect writes its
   ``audio/L16`` KVS tracks; ``byteOrder`` says so explicitly. The sample offset makes
   every gap or repeat detectable to the sample, where a millisecond timestamp would
   round.

3. A JSON text frame ``stop``: ``{"event": "stop", "stop": {"accountSid", "callSid", "streamSid"}}``.

>>> sender = L16Sender("L16-1", "instance-1", "contact-1", {})
>>> [json.loads(m)["event"] for m in sender.start_messages()]
['start']
>>> frame, = sender.media_messages("agent", bytes(320))
>>> HEADER.unpack(frame[:HEADER.size]), len(frame) - HEADER.size
((b'CL16', 1, 1, 1, 0), 320)
"""

from __future__ import annotations

import enum
import json
import struct
from types import MappingProxyType
from typing import Any, Mapping

from pipeline.media_streams import TWILIO_TRACK_OF, TWILIO_TRACKS, Media, ReceivedEvent, Start, Stop
from pipeline.records import Track
from pipeline.stream_fields import (
    FieldError,
    custom_parameters_field,
    json_object,
    object_field,
    same_types,
    string_field,
    token_violation,
)

PROTOCOL = "cresta-l16"
PROTOCOL_VERSION = "1"
SAMPLE_RATE = 8000
MEDIA_FORMAT: Mapping[str, Any] = MappingProxyType(
    {"encoding": "audio/L16", "sampleRate": SAMPLE_RATE, "channels": 1, "byteOrder": "little-endian"}
)
MAGIC = b"CL16"
FRAME_VERSION = 1
HEADER = struct.Struct("<4sBBII")
#: One second per frame: a job chunk is at most 1000 ms, so a chunk is one frame.
MAX_FRAME_SAMPLES = SAMPLE_RATE
TRACK_CODES = ("inbound", "outbound")


class L16StateError(RuntimeError):
    """A sender method called out of order (media before start, anything after stop)."""


def _to_json(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class L16Sender:
    """Builds the messages of one L16 stream; same constructor and methods as
    ``MediaStreamsSender``, so one WebSocket adapter drives either."""

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
        self._samples_sent = {track: 0 for track in Track}
        self._started = False
        self._stopped = False

    def start_messages(self) -> list[str]:
        if self._started:
            raise L16StateError("start_messages() was already called")
        self._started = True
        start = {
            "event": "start",
            "protocol": PROTOCOL,
            "version": PROTOCOL_VERSION,
            "start": {
                "accountSid": self.account_sid,
                "callSid": self.call_sid,
                "streamSid": self.stream_sid,
                "tracks": list(TRACK_CODES),
                "customParameters": dict(self.custom_parameters),
                "mediaFormat": dict(MEDIA_FORMAT),
            },
        }
        return [_to_json(start)]

    def media_messages(self, track: Track | str, pcm16: bytes) -> list[bytes]:
        """Binary frames of at most one second each for PCM16LE 8 kHz audio on ``track``."""
        track = track if isinstance(track, Track) else Track.from_label(track)
        if not self._started or self._stopped:
            raise L16StateError("media outside start_messages() … stop_messages()")
        if len(pcm16) % 2:
            raise ValueError(f"PCM16 data must have an even number of bytes, got {len(pcm16)}")
        frames = []
        step = MAX_FRAME_SAMPLES * 2
        for offset in range(0, len(pcm16), step):
            piece = pcm16[offset : offset + step]
            self._sequence_number += 1
            header = HEADER.pack(
                MAGIC,
                FRAME_VERSION,
                TRACK_CODES.index(TWILIO_TRACK_OF[track]),
                self._sequence_number,
                self._samples_sent[track],
            )
            self._samples_sent[track] += len(piece) // 2
            frames.append(header + piece)
        return frames

    def stop_messages(self) -> list[str]:
        if not self._started or self._stopped:
            raise L16StateError("stop outside start_messages() … stop_messages()")
        self._stopped = True
        stop = {
            "event": "stop",
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid, "streamSid": self.stream_sid},
        }
        return [_to_json(stop)]


class L16State(enum.Enum):
    AWAIT_START = "awaiting start"
    STREAMING = "streaming"
    STOPPED = "stopped"


class L16Receiver:
    """Strict checker for the receiving end of one L16 stream; reports like
    ``MediaStreamsReceiver`` (``violations``, never raising) and returns the same event
    types, with ``Media.chunk`` counting the track's frames and ``Media.timestamp_ms`` the
    frame's sample offset in milliseconds."""

    def __init__(self, expected_token: str | None) -> None:
        self._expected_token = expected_token
        self.state = L16State.AWAIT_START
        self.violations: list[str] = []
        self.start: Start | None = None
        self._messages_seen = 0
        self._last_sequence_number = 0
        self._audio = {name: bytearray() for name in TWILIO_TRACKS}
        self._frames = {name: 0 for name in TWILIO_TRACKS}

    @property
    def stopped(self) -> bool:
        return self.state is L16State.STOPPED

    def audio(self, track: str) -> bytes:
        """PCM16LE received on ``"inbound"`` or ``"outbound"``, in order of arrival."""
        return bytes(self._audio[track])

    def receive_text(self, text: str) -> list[ReceivedEvent]:
        self._messages_seen += 1
        if self.state is L16State.STOPPED:
            self._violation("message after stop")
            return []
        try:
            message = json_object(text)
        except FieldError as exc:
            self._violation(str(exc))
            return []
        event = message.get("event")
        try:
            if event == "start":
                return [self._start(message)]
            if event == "stop":
                return [self._stop(message)]
        except FieldError as exc:
            self._violation(f"{event}: {exc}")
            return []
        self._violation(f"unknown text event {event!r}; audio goes in binary frames")
        return []

    def receive_bytes(self, data: bytes) -> list[ReceivedEvent]:
        self._messages_seen += 1
        if self.state is L16State.STOPPED:
            self._violation("message after stop")
            return []
        if self.start is None:
            self._violation(f"binary frame while {self.state.value}")
            return []
        if len(data) < HEADER.size:
            self._violation(f"binary frame of {len(data)} bytes is shorter than the {HEADER.size}-byte header")
            return []
        magic, version, track_code, sequence_number, sample_offset = HEADER.unpack_from(data)
        payload = data[HEADER.size :]
        if magic != MAGIC or version != FRAME_VERSION:
            self._violation(f"frame header starts {magic!r} version {version}, expected {MAGIC!r} version {FRAME_VERSION}")
            return []
        if track_code >= len(TRACK_CODES):
            self._violation(f"frame track {track_code}, expected 0 (inbound) or 1 (outbound)")
            return []
        track = TRACK_CODES[track_code]
        if len(payload) % 2 or not 2 <= len(payload) <= 2 * MAX_FRAME_SAMPLES:
            self._violation(
                f"frame payload on {track} is {len(payload)} bytes, expected an even 2..{2 * MAX_FRAME_SAMPLES}"
            )
            return []
        if track not in self.start.tracks:
            self._violation(f"frame on track {track!r}, which start.tracks did not announce")
        self._check_sequence(sequence_number)
        received_samples = len(self._audio[track]) // 2
        if sample_offset != received_samples:
            self._violation(
                f"frame on {track} at sample {sample_offset}, expected {received_samples}"
            )
        self._audio[track] += payload
        self._frames[track] += 1
        return [
            Media(
                sequence_number,
                self.start.stream_sid,
                track,
                self._frames[track],
                sample_offset * 1000 // SAMPLE_RATE,
                payload,
            )
        ]

    def _start(self, message: dict[str, Any]) -> Start:
        if self.state is not L16State.AWAIT_START:
            raise FieldError(f"received while {self.state.value}")
        protocol = string_field(message, "protocol")
        version = string_field(message, "version")
        if (protocol, version) != (PROTOCOL, PROTOCOL_VERSION):
            self._violation(f"start: protocol {protocol!r} version {version!r}, expected {PROTOCOL!r} {PROTOCOL_VERSION!r}")
        body = object_field(message, "start")
        tracks = body.get("tracks")
        if not isinstance(tracks, list) or not tracks or not set(tracks) <= set(TRACK_CODES):
            raise FieldError(f"start.tracks is {tracks!r}, expected a list from {list(TRACK_CODES)}")
        start = Start(
            sequence_number=0,
            stream_sid=string_field(body, "streamSid", prefix="start.", non_empty=True),
            account_sid=string_field(body, "accountSid", prefix="start."),
            call_sid=string_field(body, "callSid", prefix="start.", non_empty=True),
            tracks=tuple(tracks),
            custom_parameters=custom_parameters_field(body),
            media_format=object_field(body, "mediaFormat", prefix="start."),
        )
        if not same_types(start.media_format, MEDIA_FORMAT):
            self._violation(f"start: mediaFormat is {start.media_format!r}, expected {dict(MEDIA_FORMAT)!r}")
        token_problem = token_violation(start.custom_parameters, self._expected_token)
        if token_problem:
            self._violation(f"start: {token_problem}")
        self.start = start
        self.state = L16State.STREAMING
        return start

    def _stop(self, message: dict[str, Any]) -> Stop:
        if self.start is None:
            raise FieldError("received before start")
        body = object_field(message, "stop")
        stop = Stop(
            self._last_sequence_number,
            string_field(body, "streamSid", prefix="stop."),
            string_field(body, "accountSid", prefix="stop."),
            string_field(body, "callSid", prefix="stop."),
        )
        if (stop.stream_sid, stop.account_sid, stop.call_sid) != (
            self.start.stream_sid,
            self.start.account_sid,
            self.start.call_sid,
        ):
            self._violation("stop: streamSid/accountSid/callSid differ from those in start")
        self.state = L16State.STOPPED
        return stop

    def _check_sequence(self, value: int) -> None:
        expected = self._last_sequence_number + 1
        if value != expected:
            self._violation(f"sequence number {value} follows {self._last_sequence_number} (expected {expected})")
        self._last_sequence_number = value

    def _violation(self, text: str) -> None:
        self.violations.append(f"message {self._messages_seen}: {text}")
