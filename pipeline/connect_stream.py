"""One contact's audio out of a pooled Amazon Connect KVS stream, without I/O.

``ConnectContactStream`` consumes the events of ``pipeline.mkv.MkvStreamParser`` (one
GetMedia response, any chunking) and yields ``AudioFrame`` records of one contact. The
rules it enforces, all from ``reference/amazon-connect-kvs.md``:

- Tracks are routed by **Name** (``AUDIO_FROM_CUSTOMER`` or the legacy
  ``Track_audio/L16`` → customer, ``AUDIO_TO_CUSTOMER`` → agent), never by number or
  CodecID. Frames of any other track are ignored and counted.
- Connect reuses a stream across contacts and writes a fragment's ``ContactId`` tag
  *after* its Cluster, so every fragment's frames are held until its ContactId is known.
  A fragment of another contact is never emitted. Once this contact's audio has begun,
  or at/after its ``StartFragmentNumber``, such a fragment ends the stream
  (``contact_changed``); before that (a reader that starts early, e.g. by timestamp, on
  a stream without a known start number) it is skipped.
- Fragments numbered below the contact's ``StartFragmentNumber`` are skipped, whoever
  they belong to: GetMedia returns fragments in order of fragment number, so they
  precede this contact's media (or belong to an earlier streaming session).
- The sample rate comes from the ``MimeType`` tag (``audio/L16;rate=8000;…``), default
  8000. Held frames are released once both ContactId and MimeType of their fragment are
  known, or when the fragment ends.
- ``AWS_KINESISVIDEO_ERROR_CODE`` / ``_ERROR_ID`` tags end the stream with ``kvs_error``.

Transitions of ``state`` happen only in ``_begin_reading`` and ``_end``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.mkv import EbmlHeader, Frame, MkvEvent, Tag, TrackEntry
from pipeline.records import AudioEnd, AudioFrame, Track

DEFAULT_SAMPLE_RATE = 8000

TRACKS_BY_NAME: dict[str, Track] = {
    "AUDIO_FROM_CUSTOMER": Track.CUSTOMER,
    # Older Connect streams named the customer track this way; AWS's own consumer
    # (realtime-transcription KVSUtils) still accepts it.
    "Track_audio/L16": Track.CUSTOMER,
    "AUDIO_TO_CUSTOMER": Track.AGENT,
}

TAG_CONTACT_ID = "ContactId"
TAG_MIME_TYPE = "MimeType"
TAG_FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
TAG_CONTINUATION_TOKEN = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"
TAG_ERROR_CODE = "AWS_KINESISVIDEO_ERROR_CODE"
TAG_ERROR_ID = "AWS_KINESISVIDEO_ERROR_ID"

#: A Connect fragment carries about 1 s of audio in ~34 blocks; this bounds what one
#: fragment without a ContactId tag can make us hold (about 10 minutes of audio).
MAX_HELD_FRAMES_PER_FRAGMENT = 20_000

_RATE_IN_MIME_TYPE = re.compile(r"rate=(\d+)")


class StreamState(enum.Enum):
    WAITING = "waiting"  # no fragment of this contact seen yet
    READING = "reading"
    ENDED = "ended"


class EndReason:
    """Stable reason codes carried by the END record and used in metrics."""

    CONTACT_CHANGED = "contact_changed"
    #: Connect reported the contact DISCONNECTED and its stream has gone quiet.
    CONTACT_ENDED = "contact_ended"
    STREAM_ENDED = "stream_ended"
    KVS_ERROR = "kvs_error"
    CORRUPT_STREAM = "corrupt_stream"


@dataclass(frozen=True)
class KvsStreamError:
    """An error GetMedia reported inside the media stream."""

    code: str
    error_id: str


@dataclass
class _Fragment:
    number: str = ""
    track_names: dict[int, str] = field(default_factory=dict)
    contact_id: str | None = None
    sample_rate: int | None = None
    skipped: bool = False
    released: bool = False
    held: list[tuple[Track, int, Frame]] = field(default_factory=list)
    frames_per_track: dict[Track, int] = field(default_factory=dict)


class ConnectContactStream:
    """Turns one GetMedia response's MKV events into one contact's ``AudioFrame`` records.

    Parameters
    ----------
    contact_id:
        The contact whose audio is wanted.
    start_fragment_number:
        Connect's ``StartFragmentNumber`` for the contact, if known; earlier fragments
        are skipped.

    >>> from pipeline.mkv import MkvStreamParser, write_connect_fragment
    >>> data = write_connect_fragment(contact_id="c-1", instance_id="i", timecode_ms=1000,
    ...                               customer_pcm=bytes(16), agent_pcm=bytes(8))
    >>> stream = ConnectContactStream("c-1")
    >>> frames = stream.feed(MkvStreamParser().feed(data))
    >>> [(f.track.label, f.frame_index, f.sample_count, f.producer_timestamp_ms) for f in frames]
    [('customer', 0, 8, 1000), ('agent', 0, 4, 1000)]
    >>> stream.end().customer_samples
    8
    """

    def __init__(self, contact_id: str, start_fragment_number: str = "") -> None:
        self.contact_id = contact_id
        self.start_fragment_number = start_fragment_number
        self.state = StreamState.WAITING
        self.end_reason = ""
        self.error: KvsStreamError | None = None
        self.error_detail = ""
        self.last_fragment_number = ""
        self.continuation_token = ""
        self.sample_rate = DEFAULT_SAMPLE_RATE
        self.samples: dict[Track, int] = {track: 0 for track in Track}
        self.frames: dict[Track, int] = {track: 0 for track in Track}
        #: Frames of tracks whose name is not a Connect audio track, by track name.
        self.unknown_track_frames: dict[str, int] = {}
        self.skipped_fragments = 0
        self.discarded_fragments = 0
        self.last_audio_end_ms = 0
        self._start_number = _fragment_number_value(start_fragment_number)
        self._fragment: _Fragment | None = None
        self._error_code = ""
        self._error_id = ""

    @property
    def ended(self) -> bool:
        return self.state is StreamState.ENDED

    def feed(self, events: Iterable[MkvEvent]) -> list[AudioFrame]:
        """Consume parser events; return the frames that became releasable."""
        out: list[AudioFrame] = []
        for event in events:
            if isinstance(event, Tag) and event.name in (TAG_ERROR_CODE, TAG_ERROR_ID):
                self._on_error_tag(event)
                continue
            if self.ended:
                continue
            if isinstance(event, EbmlHeader):
                out.extend(self._finish_fragment())
                self._fragment = _Fragment()
            elif isinstance(event, TrackEntry):
                self._current().track_names[event.number] = event.name
            elif isinstance(event, Frame):
                out.extend(self._on_frame(event))
            elif isinstance(event, Tag):
                out.extend(self._on_tag(event))
        return out

    def close(self) -> list[AudioFrame]:
        """The input ended (the response finished): settle the last fragment."""
        if self.ended:
            return []
        return self._finish_fragment()

    def fail(self, reason: str, detail: str = "") -> None:
        """End the stream because its input cannot be trusted (e.g. corrupt MKV)."""
        if not self.ended:
            self.error_detail = detail
            self._discard_current()
            self._end(reason)

    def end(self, reason: str = "") -> AudioEnd:
        """The END record: this contact's totals; ends the stream if it has not ended."""
        if not self.ended:
            self._end(reason or EndReason.STREAM_ENDED)
        return AudioEnd.from_totals(
            self.contact_id,
            self.last_fragment_number,
            self.last_audio_end_ms,
            self.samples,
            self.frames,
            reason or self.end_reason,
        )

    # -- events ------------------------------------------------------------------------

    def _current(self) -> _Fragment:
        # Input without a leading EBML header (a test feeding a bare Segment) still
        # forms one fragment.
        if self._fragment is None:
            self._fragment = _Fragment()
        return self._fragment

    def _on_frame(self, frame: Frame) -> list[AudioFrame]:
        fragment = self._current()
        name = fragment.track_names.get(frame.track_number, f"#{frame.track_number}")
        track = TRACKS_BY_NAME.get(name)
        if track is None:
            self.unknown_track_frames[name] = self.unknown_track_frames.get(name, 0) + 1
            return []
        if len(frame.payload) % 2:
            self.fail(EndReason.CORRUPT_STREAM, f"{track.label} frame of odd length {len(frame.payload)}")
            return []
        index = fragment.frames_per_track.get(track, 0)
        fragment.frames_per_track[track] = index + 1
        if fragment.skipped:
            return []
        if fragment.released:
            return [self._emit(fragment, track, index, frame)]
        if len(fragment.held) >= MAX_HELD_FRAMES_PER_FRAGMENT:
            self.fail(
                EndReason.CORRUPT_STREAM,
                f"fragment {fragment.number or '?'} holds over {MAX_HELD_FRAMES_PER_FRAGMENT} frames "
                "without a ContactId tag",
            )
            return []
        fragment.held.append((track, index, frame))
        return []

    def _on_tag(self, tag: Tag) -> list[AudioFrame]:
        fragment = self._current()
        if tag.name == TAG_FRAGMENT_NUMBER:
            fragment.number = tag.value
            number = _fragment_number_value(tag.value)
            if self._start_number is not None and number is not None and number < self._start_number:
                fragment.skipped = True
            return []
        if tag.name == TAG_CONTINUATION_TOKEN:
            self.continuation_token = tag.value
            return []
        if tag.name == TAG_MIME_TYPE:
            match = _RATE_IN_MIME_TYPE.search(tag.value)
            if match and int(match.group(1)) > 0:
                fragment.sample_rate = int(match.group(1))
                self.sample_rate = fragment.sample_rate
            return self._release_if_ready(fragment, fragment_ended=False)
        if tag.name == TAG_CONTACT_ID:
            return self._on_contact_id(fragment, tag.value)
        return []

    def _on_contact_id(self, fragment: _Fragment, contact_id: str) -> list[AudioFrame]:
        fragment.contact_id = contact_id
        if fragment.skipped:
            return []
        if contact_id == self.contact_id:
            self._begin_reading()
            return self._release_if_ready(fragment, fragment_ended=False)
        if self.state is StreamState.READING or self._start_number is not None:
            # Either the stream has moved on to the next contact, or the fragment at the
            # contact's own start belongs to someone else: this contact's audio is over.
            self._discard_current()
            self._end(EndReason.CONTACT_CHANGED)
            return []
        fragment.skipped = True
        fragment.held.clear()
        return []

    def _on_error_tag(self, tag: Tag) -> None:
        if tag.name == TAG_ERROR_CODE:
            self._error_code = tag.value
        else:
            self._error_id = tag.value
        self.error = KvsStreamError(code=self._error_code, error_id=self._error_id)
        if not self.ended:
            self.error_detail = "GetMedia reported an error in the stream"
            self._discard_current()
            self._end(EndReason.KVS_ERROR)

    # -- fragments ---------------------------------------------------------------------

    def _release_if_ready(self, fragment: _Fragment, fragment_ended: bool) -> list[AudioFrame]:
        if fragment.released or fragment.skipped or fragment.contact_id != self.contact_id:
            return []
        if fragment.sample_rate is None and not fragment_ended:
            return []
        fragment.released = True
        held, fragment.held = fragment.held, []
        return [self._emit(fragment, track, index, frame) for track, index, frame in held]

    def _finish_fragment(self) -> list[AudioFrame]:
        fragment = self._fragment
        if fragment is None:
            return []
        out = self._release_if_ready(fragment, fragment_ended=True)
        if fragment.skipped:
            self.skipped_fragments += 1
        elif fragment.contact_id is None and fragment.held:
            # Audio whose contact cannot be proven is never emitted.
            self.discarded_fragments += 1
        elif fragment.contact_id == self.contact_id and fragment.number:
            self.last_fragment_number = fragment.number
        self._fragment = None
        return out

    def _discard_current(self) -> None:
        if self._fragment is not None and self._fragment.held:
            self.discarded_fragments += 1
        self._fragment = None

    def _emit(self, fragment: _Fragment, track: Track, index: int, frame: Frame) -> AudioFrame:
        rate = fragment.sample_rate or self.sample_rate
        record = AudioFrame(
            contact_id=self.contact_id,
            track=track,
            fragment_number=fragment.number,
            frame_index=index,
            producer_timestamp_ms=frame.timecode,
            sample_rate=rate,
            pcm=frame.payload,
        )
        self.samples[track] += record.sample_count
        self.frames[track] += 1
        self.last_audio_end_ms = max(
            self.last_audio_end_ms, frame.timecode + record.sample_count * 1000 // rate
        )
        if fragment.number:
            self.last_fragment_number = fragment.number
        return record

    # -- state -------------------------------------------------------------------------

    def _begin_reading(self) -> None:
        if self.state is StreamState.WAITING:
            self.state = StreamState.READING

    def _end(self, reason: str) -> None:
        self.state = StreamState.ENDED
        self.end_reason = reason


def _fragment_number_value(text: str) -> int | None:
    return int(text) if text.isdigit() else None
