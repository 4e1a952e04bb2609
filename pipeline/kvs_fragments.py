"""What a GetMedia response holds, fragment by fragment and contact by contact; no I/O.

Two consumers of ``pipeline.mkv.MkvStreamParser`` events for the support tools
(``cresta-pipeline kvs inspect`` / ``kvs dump``). Both take events in any batching and
keep only the fragment being read, so a live stream can be followed as it arrives.

- ``FragmentSummariser`` reports each fragment (an EBML header and its Segment) once it
  is complete: its tags, its frames per track, and the AWS fragment number and
  timestamps from the tags GetMedia adds.
- ``ContactAudioCollector`` gathers each contact's PCM per track exactly as the
  connector would publish it, by running ``ConnectContactStream`` (the connector's own
  Connect rules: tracks by name, hold until ContactId, sample rate from MimeType) once
  per contact. A pooled stream carries one contact after another, and a fragment's
  ContactId tag comes after its audio, so each fragment's events are held until its
  ContactId is known and then handed to that contact's stream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from pipeline.connect_stream import (
    MAX_HELD_FRAMES_PER_FRAGMENT,
    TAG_CONTACT_ID,
    TAG_ERROR_CODE,
    TAG_ERROR_ID,
    TAG_FRAGMENT_NUMBER,
    ConnectContactStream,
)
from pipeline.mkv import EbmlHeader, Frame, MkvEvent, Tag, TrackEntry
from pipeline.records import AudioFrame, Track

TAG_SERVER_TIMESTAMP: Final = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
TAG_PRODUCER_TIMESTAMP: Final = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"

_ERROR_TAGS: Final = (TAG_ERROR_CODE, TAG_ERROR_ID)
#: KVS writes its timestamps as epoch seconds with millisecond precision ('1726677687.758').
_EPOCH_SECONDS: Final = re.compile(r"([0-9]+)(?:\.([0-9]{1,3}))?")


def epoch_seconds_to_ms(text: str) -> int | None:
    """Epoch milliseconds of a KVS timestamp tag, computed exactly (no float on the way);
    ``None`` if the text is not epoch seconds with at most millisecond precision.

    >>> epoch_seconds_to_ms("1726677687.758")
    1726677687758
    >>> epoch_seconds_to_ms("5.1"), epoch_seconds_to_ms("1.2345")
    (5100, None)
    """
    match = _EPOCH_SECONDS.fullmatch(text)
    if match is None:
        return None
    seconds, fraction = match.groups()
    return int(seconds) * 1000 + int((fraction or "").ljust(3, "0"))


def describe_kvs_error(error_tags: dict[str, str]) -> str:
    """A one-line message for the error tags GetMedia wrote into a stream."""
    tags = ", ".join(f"{name}={value}" for name, value in error_tags.items())
    return f"GetMedia reported an error in the stream: {tags}"


def track_label(number: int, name: str) -> str:
    """How a track is named in summaries: its Name, or ``#<number>`` when it has none."""
    return name or f"#{number}"


@dataclass
class FragmentSummary:
    """One fragment. ``tags`` keeps the last value of a name that occurs twice;
    ``frames`` counts frames by ``track_label``."""

    tracks: dict[int, TrackEntry] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)

    @property
    def fragment_number(self) -> str | None:
        return self.tags.get(TAG_FRAGMENT_NUMBER)

    @property
    def producer_timestamp_ms(self) -> int | None:
        return _timestamp_ms(self.tags.get(TAG_PRODUCER_TIMESTAMP))

    @property
    def server_timestamp_ms(self) -> int | None:
        return _timestamp_ms(self.tags.get(TAG_SERVER_TIMESTAMP))

    @property
    def contact_id(self) -> str | None:
        return self.tags.get(TAG_CONTACT_ID)

    @property
    def kvs_error(self) -> dict[str, str]:
        """The error tags GetMedia wrote into this fragment, if any."""
        return {name: self.tags[name] for name in _ERROR_TAGS if name in self.tags}


def _timestamp_ms(text: str | None) -> int | None:
    return None if text is None else epoch_seconds_to_ms(text)


class FragmentSummariser:
    """Parser events in, completed ``FragmentSummary`` values out.

    >>> from pipeline.mkv import MkvStreamParser, write_connect_fragment
    >>> data = write_connect_fragment(contact_id="c-1", instance_id="i", timecode_ms=1000,
    ...                               customer_pcm=bytes(16), agent_pcm=bytes(8))
    >>> summariser = FragmentSummariser()
    >>> summariser.feed(MkvStreamParser().feed(data))
    []
    >>> [(f.contact_id, f.frames) for f in summariser.close()]
    [('c-1', {'AUDIO_FROM_CUSTOMER': 1, 'AUDIO_TO_CUSTOMER': 1})]
    """

    def __init__(self) -> None:
        #: Every distinct track seen, in order of first appearance.
        self.tracks: list[TrackEntry] = []
        self._fragment: FragmentSummary | None = None

    def feed(self, events: Iterable[MkvEvent]) -> list[FragmentSummary]:
        """Consume parser events; return the fragments they completed."""
        completed: list[FragmentSummary] = []
        for event in events:
            if isinstance(event, EbmlHeader):
                completed.extend(self.close())
                self._fragment = FragmentSummary()
            elif isinstance(event, TrackEntry):
                self._current().tracks[event.number] = event
                if event not in self.tracks:
                    self.tracks.append(event)
            elif isinstance(event, Frame):
                fragment = self._current()
                track = fragment.tracks.get(event.track_number)
                label = track_label(event.track_number, track.name if track else "")
                fragment.frames[label] = fragment.frames.get(label, 0) + 1
            elif isinstance(event, Tag):
                self._current().tags[event.name] = event.value
        return completed

    def close(self) -> list[FragmentSummary]:
        """The input ended: the fragment being read, if any, is complete."""
        fragment, self._fragment = self._fragment, None
        return [] if fragment is None else [fragment]

    def _current(self) -> FragmentSummary:
        # Input that starts without an EBML header (a bare Segment) is one fragment.
        if self._fragment is None:
            self._fragment = FragmentSummary()
        return self._fragment


@dataclass
class ContactAudio:
    """One contact's PCM16LE per track, in stream order."""

    contact_id: str
    sample_rate: int
    pcm: dict[Track, bytearray] = field(default_factory=lambda: {track: bytearray() for track in Track})


class ContactAudioCollector:
    """Parser events in, every contact's audio out (``contacts``, in order of appearance).

    Collecting stops at the first problem (an error GetMedia reported in the stream, a
    fragment the connector would reject, a change of sample rate within a contact):
    audio after it could not be trusted to line up with what came before.

    >>> from pipeline.mkv import MkvStreamParser, write_connect_fragment
    >>> parser, collector = MkvStreamParser(), ContactAudioCollector()
    >>> for contact_id in ("c-1", "c-2"):
    ...     collector.feed(parser.feed(write_connect_fragment(
    ...         contact_id=contact_id, instance_id="i", timecode_ms=1000,
    ...         customer_pcm=bytes(16), agent_pcm=bytes(8))))
    >>> collector.close()
    >>> [(a.contact_id, a.sample_rate, len(a.pcm[Track.AGENT])) for a in collector.contacts.values()]
    [('c-1', 8000, 8), ('c-2', 8000, 8)]
    """

    def __init__(self) -> None:
        self.contacts: dict[str, ContactAudio] = {}
        #: The error tags GetMedia wrote into the stream, if any.
        self.kvs_error: dict[str, str] = {}
        #: Frames of fragments that never showed a ContactId tag: no contact to file them under.
        self.frames_without_contact = 0
        #: Frames of tracks whose name is not a Connect audio track, by track name.
        self.unknown_track_frames: dict[str, int] = {}
        self._stream: ConnectContactStream | None = None
        # Events of the current fragment while its ContactId is unknown; None once known.
        self._pending: list[MkvEvent] | None = []
        self._pending_frames = 0
        self._failures: list[str] = []

    @property
    def problems(self) -> list[str]:
        """Why collecting stopped early, if it did."""
        if self.kvs_error:
            return [describe_kvs_error(self.kvs_error), *self._failures]
        return list(self._failures)

    @property
    def _stopped(self) -> bool:
        return bool(self.kvs_error or self._failures)

    def feed(self, events: Iterable[MkvEvent]) -> None:
        for event in events:
            if isinstance(event, Tag) and event.name in _ERROR_TAGS:
                self.kvs_error[event.name] = event.value
            if self._stopped:
                continue
            if isinstance(event, EbmlHeader):
                self._finish_fragment()
                self._pending = []
            if self._pending is None:
                assert self._stream is not None
                self._collect(self._stream, self._stream.feed([event]))
            else:
                self._hold(event)

    def close(self) -> None:
        """The input ended: settle the last fragment and every contact."""
        if self._stopped:
            return
        self._finish_fragment()
        self._retire_stream()

    def _hold(self, event: MkvEvent) -> None:
        assert self._pending is not None
        self._pending.append(event)
        if isinstance(event, Frame):
            self._pending_frames += 1
            if self._pending_frames > MAX_HELD_FRAMES_PER_FRAGMENT:
                self._fail(
                    f"a fragment holds over {MAX_HELD_FRAMES_PER_FRAGMENT} frames without a ContactId tag"
                )
        elif isinstance(event, Tag) and event.name == TAG_CONTACT_ID:
            self._hand_over(event.value)

    def _hand_over(self, contact_id: str) -> None:
        """The held fragment belongs to ``contact_id``: give it to that contact's stream."""
        stream = self._stream
        if stream is None or stream.contact_id != contact_id:
            self._retire_stream()
            if self._stopped:
                return
            stream = self._stream = ConnectContactStream(contact_id)
        events, self._pending, self._pending_frames = self._pending or [], None, 0
        self._collect(stream, stream.feed(events))

    def _finish_fragment(self) -> None:
        if self._pending is not None:
            self.frames_without_contact += self._pending_frames
            self._pending, self._pending_frames = None, 0

    def _retire_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        if not stream.ended:
            self._collect(stream, stream.close())
        for name, count in stream.unknown_track_frames.items():
            self.unknown_track_frames[name] = self.unknown_track_frames.get(name, 0) + count

    def _collect(self, stream: ConnectContactStream, frames: list[AudioFrame]) -> None:
        for frame in frames:
            audio = self.contacts.get(frame.contact_id)
            if audio is None:
                audio = self.contacts[frame.contact_id] = ContactAudio(frame.contact_id, frame.sample_rate)
            elif audio.sample_rate != frame.sample_rate:
                self._fail(
                    f"contact {frame.contact_id} changes sample rate from {audio.sample_rate} to "
                    f"{frame.sample_rate} Hz in fragment {frame.fragment_number or '?'}; "
                    "a WAV file has one rate"
                )
                return
            audio.pcm[frame.track] += frame.pcm
        # Each stream only ever sees its own contact's fragments, so any end it reaches
        # by itself means input the connector would reject.
        if stream.ended:
            detail = f": {stream.error_detail}" if stream.error_detail else ""
            self._fail(f"contact {stream.contact_id}: {stream.end_reason}{detail}")

    def _fail(self, problem: str) -> None:
        self._failures.append(problem)
