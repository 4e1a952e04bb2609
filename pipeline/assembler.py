"""Per-contact audio assembly: frames in, exact ``chunk_ms`` chunks out.

One ``ContactAudioAssembler`` holds everything the job knows about one contact: its
attributes (from contact events), its lifecycle phase and, per track, a sample clock.
Chunks are cut on that clock, so every chunk holds exactly ``chunk_ms`` of samples
whatever the KVS block sizes were; only an idle flush or the final chunk is shorter.

The object is plain Python with no I/O; the Flink adapter keeps one per key in state
(pickled on every record, so the state stays small: no closures, bounded buffers) and
passes the current processing time in, which keeps the logic testable without a JVM.

Rules, per track:

- **Sample clock.** Position 0 is the track's first sample. A frame's position comes
  from its producer timestamp relative to that origin, converted to samples at the
  track's rate. KVS timecodes are whole milliseconds, so a position within
  ``timestamp_tolerance`` (one millisecond of samples, plus one) of where the clock
  expects the next sample is snapped to it.
- **Replays** are dropped by key — a frame whose (fragment_number, frame_index) is not
  newer than the last frame put on the clock, or equals one waiting in the reorder
  buffer — and by position: samples before the clock's next position are already
  assembled, so a frame made only of them is a duplicate and a partially overlapping
  frame contributes its new samples only. No sample is assembled twice.
- **Reordering.** Frames wait in a reorder buffer, ordered by key (within one KVS stream
  key order is time order, and it stays exact where millisecond timestamps are not),
  until they provably follow the assembled audio: the next frame_index of the same
  fragment, or the first frame of a later fragment at the position the clock expects.
  Anything else waits until the reorder window has passed: the buffered audio spans
  ``reorder_window_ms``, or a buffered frame has waited that long in processing time.
  A track's first frame has nothing to follow, so it waits for the window too: a
  producer retry may deliver a contact's first fragment after its second.
- **Gaps.** When the window has passed and the next frame lies beyond the expected
  position, the missing span is filled with silence, counted in the chunk's
  ``gap_filled_ms`` (and exactly in ``gap_filled_samples``); audio stays on the clock.
- **Idle flush.** A partial chunk left ``idle_flush_ms`` without new frames is emitted
  (not final); the next chunk continues the clock, so chunks after it start off the
  ``chunk_ms`` grid and ``seq`` simply continues.

Enrichment: chunks cut before the contact's STARTED (or ATTRIBUTES_UPDATED) event are
held up to ``enrich_max_wait_ms`` from the contact's first frame, then flow flagged
``attributes_missing``.

Contact lifecycle: every phase change is in ``PHASE_TRANSITIONS`` and happens only in
``_apply``; ``_phase_deadline`` names the one timed signal of each phase.

- The END record (sent by the connector after the contact's last frame) closes the
  contact: final chunks, a completeness check of its per-track totals, ``ContactClosed``.
  If the totals exceed what arrived, frames may still be in flight behind the END (a
  producer retry), so the contact waits up to the reorder window for them first.
- The ENDED contact event alone closes nothing (it may overtake audio still in flight):
  the assembler waits for END up to ``state_grace_ms`` from the later of ENDED and the
  contact's last frame; if END never comes it emits the
  final chunks, ``EndRecordMissing`` in place of a completeness check, ``ContactClosed``
  and ``ContactExpired`` at once.
- ``state_grace_ms`` after END the assembler emits ``ContactExpired``: the adapter clears
  the keyed state. Until then replays of the closed contact are recognised and dropped.

Limits: a frame shorter than the timestamp tolerance (about 1 ms) whose neighbour across
a fragment boundary arrives before it cannot be placed from millisecond timestamps;
such sub-millisecond KVS blocks do not occur in Connect streams (about 30 ms each).
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from operator import attrgetter

from pipeline.records import AudioEnd, AudioFrame, ContactEvent, EventType, Track

MIN_CHUNK_MS = 20
MAX_CHUNK_MS = 1000

DEFAULT_REORDER_WINDOW_MS = 500
#: Frames arrive a KVS fragment (about 1 s of Connect audio) at a time, so an idle flush
#: must outwait the fragment cadence and its jitter, or it cuts short chunks between
#: ordinary fragments.
DEFAULT_IDLE_FLUSH_MS = 2000
DEFAULT_STATE_GRACE_MS = 60_000
#: The reorder buffer lives in keyed state that is pickled on every record; ten seconds
#: of two 8 kHz tracks is 320 KB, well past what reordering by a producer retry needs.
MAX_REORDER_WINDOW_MS = 10_000
#: Bounds the reorder buffer by count as well as by audio span, so frames without
#: samples (or with absurd timestamps) cannot grow it; Connect blocks are ~30 ms, so a
#: 10 s window holds about 340 of them.
MAX_REORDER_FRAMES = 512
#: KVS frame timecodes are whole milliseconds.
TIMESTAMP_RESOLUTION_MS = 1


@dataclass(frozen=True)
class ContactInfo:
    """What the contact's events told us; copied onto every chunk."""

    instance_id: str = ""
    agent_id: str = ""
    queue_name: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AudioChunk:
    contact_id: str
    track: Track
    seq: int
    #: Producer timestamp (epoch ms) of the chunk's first sample, on the sample clock.
    start_ms: int
    sample_rate: int
    pcm: bytes
    final: bool
    info: ContactInfo
    #: True when the chunk left before the contact's STARTED event was seen.
    attributes_missing: bool
    #: Processing time at which the chunk was complete.
    assembled_at_ms: int
    #: Silence inserted for samples that never arrived, rounded to milliseconds.
    gap_filled_ms: int = 0
    gap_filled_samples: int = 0

    @property
    def sample_count(self) -> int:
        return len(self.pcm) // 2

    @property
    def duration_ms(self) -> int:
        return self.sample_count * 1000 // self.sample_rate


@dataclass(frozen=True)
class ContactClosed:
    """Emitted after a contact's final chunks: downstream may release per-contact resources."""

    contact_id: str


@dataclass(frozen=True)
class CompletenessMismatch:
    """The END record's totals disagree with the samples that arrived (gap fill excluded)."""

    contact_id: str
    track: Track
    expected_samples: int
    assembled_samples: int


@dataclass(frozen=True)
class EndRecordMissing:
    """The contact ENDED but no END record came within the grace period, so there were no
    totals to check against; the contact was closed with what arrived (gap fill excluded)."""

    contact_id: str
    customer_samples: int
    agent_samples: int


@dataclass(frozen=True)
class ContactExpired:
    """The last output for a contact: its state may be cleared."""

    contact_id: str


AssemblerOutput = AudioChunk | ContactClosed | CompletenessMismatch | EndRecordMissing | ContactExpired


class Phase(enum.Enum):
    STREAMING = "streaming"  # audio flows, no end signal yet
    DISCONNECTED = "disconnected"  # the ENDED event came; waiting for audio in flight and END
    DRAINING = "draining"  # END came; waiting (reorder window) for frames its totals count
    CLOSED = "closed"  # final chunks out; replays are dropped until the grace period ends
    EXPIRED = "expired"  # ContactExpired out; the adapter clears the state


class Signal(enum.Enum):
    CONTACT_ENDED = "contact_ended"  # the ENDED contact event
    END_RECORD = "end_record"  # the connector's END record
    AUDIO_COMPLETE = "audio_complete"  # END's totals arrived, or the reorder window passed
    END_OVERDUE = "end_overdue"  # state_grace_ms after ENDED without an END record
    GRACE_OVER = "grace_over"  # state_grace_ms after END


#: Every phase change of a contact. A signal not listed for the current phase is ignored.
PHASE_TRANSITIONS: dict[tuple[Phase, Signal], Phase] = {
    (Phase.STREAMING, Signal.CONTACT_ENDED): Phase.DISCONNECTED,
    (Phase.STREAMING, Signal.END_RECORD): Phase.DRAINING,
    (Phase.DISCONNECTED, Signal.END_RECORD): Phase.DRAINING,
    (Phase.DISCONNECTED, Signal.END_OVERDUE): Phase.EXPIRED,
    (Phase.DRAINING, Signal.AUDIO_COMPLETE): Phase.CLOSED,
    (Phase.CLOSED, Signal.GRACE_OVER): Phase.EXPIRED,
}

_ACCEPTING_AUDIO = frozenset({Phase.STREAMING, Phase.DISCONNECTED, Phase.DRAINING})


@dataclass
class AssemblyStats:
    """Counters for metrics; they only grow."""

    #: Frames dropped whole because their samples were already assembled: replays, and
    #: frames after the contact closed (END follows the last frame on an ordered shard).
    duplicates_dropped: int = 0
    #: Samples cut from frames that partially overlapped assembled audio.
    overlap_samples_dropped: int = 0
    #: Frames from before a track's first sample that arrived after the clock started.
    late_frames_dropped: int = 0
    #: Frames at another sample rate than their track's, or with an odd PCM length.
    frames_rejected: int = 0


@dataclass
class _BufferedFrame:
    key: tuple[int, int]
    timestamp_ms: int
    arrived_at_ms: int
    pcm: bytes

    @property
    def sample_count(self) -> int:
        return len(self.pcm) // 2


_buffered_key = attrgetter("key")


@dataclass
class _ChunkCut:
    """A chunk's audio as the track cut it, before the contact enriches it."""

    seq: int
    start_ms: int
    pcm: bytes
    gap_samples: int


@dataclass
class _TrackClock:
    """One track's sample clock, reorder buffer and the audio not yet cut into a chunk."""

    sample_rate: int
    #: Producer timestamp of sample position 0. Until the first frame is released it
    #: follows the earliest frame seen, so a track whose first frame arrives late still
    #: starts at its first sample.
    origin_ms: int
    #: Position of the next sample to assemble: everything before it is in a chunk or
    #: in ``pending`` (real audio or gap fill).
    next_position: int = 0
    #: Key of the newest frame put on the clock; frames at or before it are replays.
    released_key: tuple[int, int] | None = None
    reorder: list[_BufferedFrame] = field(default_factory=list)
    pending: bytearray = field(default_factory=bytearray)
    #: Gap-filled spans inside ``pending``, as [start, end) positions.
    pending_gaps: list[tuple[int, int]] = field(default_factory=list)
    next_seq: int = 0
    #: Samples that arrived and were assembled, gap fill excluded.
    real_samples: int = 0
    last_frame_at_ms: int = 0

    @property
    def timestamp_tolerance(self) -> int:
        return -(-self.sample_rate * TIMESTAMP_RESOLUTION_MS // 1000) + 1

    @property
    def buffered_samples(self) -> int:
        return sum(f.sample_count for f in self.reorder)

    def position_of(self, timestamp_ms: int) -> int:
        # Rounded to the nearest sample (half up), in integers so no rate loses precision.
        return ((timestamp_ms - self.origin_ms) * self.sample_rate * 2 + 1000) // 2000

    def offer(self, frame: AudioFrame, now_ms: int, stats: AssemblyStats) -> bool:
        """Buffer ``frame`` unless it is a replay or late; True if buffered."""
        key = (int(frame.fragment_number or 0), frame.frame_index)
        if self.released_key is not None and key <= self.released_key:
            # Key order is time order, so this frame's place on the clock is taken: by
            # its own first copy, or by gap fill if it came too late. Only a frame from
            # before the origin never had a place.
            if self.position_of(frame.producer_timestamp_ms) < -self.timestamp_tolerance:
                stats.late_frames_dropped += 1
            else:
                stats.duplicates_dropped += 1
            return False
        index = bisect_left(self.reorder, key, key=_buffered_key)
        if index < len(self.reorder) and self.reorder[index].key == key:
            stats.duplicates_dropped += 1
            return False
        if self.released_key is None:
            self.origin_ms = min(self.origin_ms, frame.producer_timestamp_ms)
        self.reorder.insert(index, _BufferedFrame(key, frame.producer_timestamp_ms, now_ms, frame.pcm))
        self.last_frame_at_ms = now_ms
        return True

    def release(self, now_ms: int, window_ms: int, stats: AssemblyStats, flush: bool = False) -> None:
        """Put buffered frames on the clock while they follow it or their window has
        passed; ``flush`` puts all of them (the contact is closing)."""
        while self.reorder:
            head = self.reorder[0]
            if not (flush or self._follows(head) or self._window_passed(now_ms, window_ms)):
                return
            del self.reorder[0]
            self._place(head, stats)

    def reorder_deadline_ms(self, window_ms: int) -> int | None:
        if not self.reorder:
            return None
        return min(f.arrived_at_ms for f in self.reorder) + window_ms

    def cut_chunks(self, chunk_samples: int) -> list[_ChunkCut]:
        cuts = []
        while len(self.pending) >= 2 * chunk_samples:
            cuts.append(self._cut(chunk_samples))
        return cuts

    def cut_rest(self) -> _ChunkCut:
        return self._cut(len(self.pending) // 2)

    def _follows(self, head: _BufferedFrame) -> bool:
        if self.released_key is None:
            return False
        fragment, index = head.key
        released_fragment, released_index = self.released_key
        if fragment == released_fragment:
            return index == released_index + 1
        # How many frames the previous fragment had is unknown: its timestamp decides.
        return index == 0 and self.position_of(head.timestamp_ms) <= self.next_position + self.timestamp_tolerance

    def _window_passed(self, now_ms: int, window_ms: int) -> bool:
        last = self.reorder[-1]
        span = self.position_of(last.timestamp_ms) + last.sample_count - self.next_position
        return (
            len(self.reorder) > MAX_REORDER_FRAMES
            or span >= window_ms * self.sample_rate // 1000
            or now_ms - min(f.arrived_at_ms for f in self.reorder) >= window_ms
        )

    def _place(self, frame: _BufferedFrame, stats: AssemblyStats) -> None:
        position = self.position_of(frame.timestamp_ms)
        if abs(position - self.next_position) <= self.timestamp_tolerance:
            position = self.next_position
        if position > self.next_position:
            gap = position - self.next_position
            self.pending_gaps.append((self.next_position, position))
            self.pending += bytes(2 * gap)
            self.next_position = position
        overlap = self.next_position - position
        self.released_key = frame.key
        if frame.sample_count and overlap >= frame.sample_count:
            stats.duplicates_dropped += 1
            return
        stats.overlap_samples_dropped += overlap
        new = frame.pcm[2 * overlap :]
        self.pending += new
        self.next_position += len(new) // 2
        self.real_samples += len(new) // 2

    def _cut(self, samples: int) -> _ChunkCut:
        start = self.next_position - len(self.pending) // 2
        end = start + samples
        gap = sum(max(0, min(e, end) - max(s, start)) for s, e in self.pending_gaps)
        self.pending_gaps = [(max(s, end), e) for s, e in self.pending_gaps if e > end]
        pcm = bytes(self.pending[: 2 * samples])
        del self.pending[: 2 * samples]
        cut = _ChunkCut(self.next_seq, self.origin_ms + start * 1000 // self.sample_rate, pcm, gap)
        self.next_seq += 1
        return cut


class ContactAudioAssembler:
    """Chunks one contact's audio and enriches it.

    Parameters
    ----------
    contact_id:
        The key this assembler belongs to.
    chunk_ms:
        Chunk length, 20–1000 ms.
    enrich_max_wait_ms:
        How long audio that arrives before the contact's STARTED event is held back
        waiting for the attributes, counted from the contact's first frame; after that
        it flows flagged ``attributes_missing``.
    reorder_window_ms:
        How far (in buffered audio or in processing time) frames may arrive out of order
        before a missing span is declared a gap and filled with silence; 0 disables
        reordering. Also how long the END record waits for frames its totals count.
    idle_flush_ms:
        A partial chunk is emitted after this long without new frames on its track.
    state_grace_ms:
        After END (or, without END, after the ENDED event) the contact's state is kept
        this long to drop replays, then ``ContactExpired`` says it may be cleared.
    """

    def __init__(
        self,
        contact_id: str,
        chunk_ms: int = 100,
        enrich_max_wait_ms: int = 2000,
        *,
        reorder_window_ms: int = DEFAULT_REORDER_WINDOW_MS,
        idle_flush_ms: int = DEFAULT_IDLE_FLUSH_MS,
        state_grace_ms: int = DEFAULT_STATE_GRACE_MS,
    ) -> None:
        if not MIN_CHUNK_MS <= chunk_ms <= MAX_CHUNK_MS:
            raise ValueError(f"chunk_ms must be within {MIN_CHUNK_MS}–{MAX_CHUNK_MS}, got {chunk_ms}")
        if not 0 <= reorder_window_ms <= MAX_REORDER_WINDOW_MS:
            raise ValueError(
                f"reorder_window_ms must be within 0–{MAX_REORDER_WINDOW_MS}, got {reorder_window_ms}"
            )
        if idle_flush_ms <= 0:
            raise ValueError(f"idle_flush_ms must be positive, got {idle_flush_ms}")
        if enrich_max_wait_ms < 0 or state_grace_ms < 0:
            raise ValueError("enrich_max_wait_ms and state_grace_ms must not be negative")
        self.contact_id = contact_id
        self.chunk_ms = chunk_ms
        self.enrich_max_wait_ms = enrich_max_wait_ms
        self.reorder_window_ms = reorder_window_ms
        self.idle_flush_ms = idle_flush_ms
        self.state_grace_ms = state_grace_ms
        self.phase = Phase.STREAMING
        self.info: ContactInfo | None = None
        self.tracks: dict[Track, _TrackClock] = {}
        self.stats = AssemblyStats()
        self.held: list[AudioChunk] = []
        self.first_frame_at_ms: int | None = None
        self.enrichment_given_up = False
        self.ended_event_at_ms: int | None = None
        self.end: AudioEnd | None = None
        self.end_received_at_ms: int | None = None

    # -- inputs ------------------------------------------------------------------------

    def on_event(self, event: ContactEvent, now_ms: int) -> list[AssemblerOutput]:
        if event.type is EventType.ENDED:
            return self._apply(Signal.CONTACT_ENDED, now_ms)
        base = self.info or ContactInfo()
        self.info = ContactInfo(
            instance_id=event.instance_id or base.instance_id,
            agent_id=event.agent_id or base.agent_id,
            queue_name=event.queue_name or base.queue_name,
            attributes={**base.attributes, **event.attributes},
        )
        return self._release_held()

    def on_frame(self, frame: AudioFrame, now_ms: int) -> list[AssemblerOutput]:
        if self.phase not in _ACCEPTING_AUDIO:
            self.stats.duplicates_dropped += 1
            return []
        if self.first_frame_at_ms is None:
            self.first_frame_at_ms = now_ms
        track = self.tracks.get(frame.track)
        rate = track.sample_rate if track else frame.sample_rate
        if len(frame.pcm) % 2 or frame.sample_rate != rate or rate <= 0:
            self.stats.frames_rejected += 1
            return []
        if track is None:
            track = self.tracks[frame.track] = _TrackClock(frame.sample_rate, frame.producer_timestamp_ms)
        if not track.offer(frame, now_ms, self.stats):
            return []
        track.release(now_ms, self.reorder_window_ms, self.stats)
        out = self._route(self._chunks(frame.track, track.cut_chunks(self._chunk_samples(track)), now_ms), now_ms)
        if self.phase is Phase.DRAINING and self._end_totals_arrived():
            out += self._apply(Signal.AUDIO_COMPLETE, now_ms)
        return out

    def on_end(self, end: AudioEnd, now_ms: int) -> list[AssemblerOutput]:
        """The connector's END record: close the contact once the frames it counts are in."""
        if (self.phase, Signal.END_RECORD) not in PHASE_TRANSITIONS:
            return []
        self.end = end
        return self._apply(Signal.END_RECORD, now_ms)

    def on_timer(self, now_ms: int) -> list[AssemblerOutput]:
        """Processing-time tick: everything due by ``now_ms`` happens, so afterwards
        ``next_timer_ms()`` is later than ``now_ms`` (or None)."""
        out: list[AssemblerOutput] = []
        if self.phase in _ACCEPTING_AUDIO:
            chunks = []
            for track_id, track in self.tracks.items():
                track.release(now_ms, self.reorder_window_ms, self.stats)
                cuts = track.cut_chunks(self._chunk_samples(track))
                if track.pending and now_ms - track.last_frame_at_ms >= self.idle_flush_ms:
                    cuts.append(track.cut_rest())
                chunks += self._chunks(track_id, cuts, now_ms)
            out += self._route(chunks, now_ms)
        while (deadline := self._phase_deadline()) is not None and deadline[0] <= now_ms:
            out += self._apply(deadline[1], now_ms)
        return out

    def next_timer_ms(self) -> int | None:
        deadlines = []
        if self.held and self.first_frame_at_ms is not None:
            deadlines.append(self.first_frame_at_ms + self.enrich_max_wait_ms)
        for track in self.tracks.values():
            reorder = track.reorder_deadline_ms(self.reorder_window_ms)
            if reorder is not None:
                deadlines.append(reorder)
            if track.pending:
                deadlines.append(track.last_frame_at_ms + self.idle_flush_ms)
        phase_deadline = self._phase_deadline()
        if phase_deadline is not None:
            deadlines.append(phase_deadline[0])
        return min(deadlines, default=None)

    # -- lifecycle ---------------------------------------------------------------------

    def _phase_deadline(self) -> tuple[int, Signal] | None:
        """The timed signal of the current phase and when it is due."""
        if self.phase is Phase.DISCONNECTED:
            # Audio still arriving after ENDED is a backlog being worked off (a restored
            # job, a resumed connector worker) with the END record behind it: the wait
            # runs from the last frame, so a backlog longer than the grace is not cut off.
            last_audio_ms = max((track.last_frame_at_ms for track in self.tracks.values()), default=0)
            return max(self.ended_event_at_ms, last_audio_ms) + self.state_grace_ms, Signal.END_OVERDUE
        if self.phase is Phase.DRAINING:
            return self.end_received_at_ms + self.reorder_window_ms, Signal.AUDIO_COMPLETE
        if self.phase is Phase.CLOSED:
            return self.end_received_at_ms + self.state_grace_ms, Signal.GRACE_OVER
        return None

    def _apply(self, signal: Signal, now_ms: int) -> list[AssemblerOutput]:
        """The only place the phase changes, with what entering each phase does."""
        target = PHASE_TRANSITIONS.get((self.phase, signal))
        if target is None:
            return []
        previous, self.phase = self.phase, target
        if target is Phase.DISCONNECTED:
            self.ended_event_at_ms = now_ms
            return []
        if target is Phase.DRAINING:
            self.end_received_at_ms = now_ms
            if self._end_totals_arrived() or self.reorder_window_ms == 0:
                return self._apply(Signal.AUDIO_COMPLETE, now_ms)
            return []
        if target is Phase.CLOSED:
            return [*self._final_chunks(now_ms), *self._completeness_reports(), ContactClosed(self.contact_id)]
        if previous is Phase.DISCONNECTED:
            return [
                *self._final_chunks(now_ms),
                EndRecordMissing(self.contact_id, self._real_samples(Track.CUSTOMER), self._real_samples(Track.AGENT)),
                ContactClosed(self.contact_id),
                ContactExpired(self.contact_id),
            ]
        return [ContactExpired(self.contact_id)]

    def _end_totals_arrived(self) -> bool:
        assert self.end is not None
        for track_id in Track:
            track = self.tracks.get(track_id)
            arrived = track.real_samples + track.buffered_samples if track else 0
            if arrived < self.end.samples(track_id):
                return False
        return True

    def _completeness_reports(self) -> list[AssemblerOutput]:
        assert self.end is not None
        return [
            CompletenessMismatch(self.contact_id, track_id, self.end.samples(track_id), self._real_samples(track_id))
            for track_id in Track
            if self._real_samples(track_id) != self.end.samples(track_id)
        ]

    def _real_samples(self, track_id: Track) -> int:
        track = self.tracks.get(track_id)
        return track.real_samples if track else 0

    def _final_chunks(self, now_ms: int) -> list[AssemblerOutput]:
        # The contact is over: buffered frames go on the clock as they are, and
        # attributes that never came will not come now.
        chunks = []
        for track_id, track in self.tracks.items():
            track.release(now_ms, self.reorder_window_ms, self.stats, flush=True)
            cuts = track.cut_chunks(self._chunk_samples(track))
            chunks += self._chunks(track_id, cuts, now_ms)
            chunks += self._chunks(track_id, [track.cut_rest()], now_ms, final=True)
        return [*self._release_held(force=True), *chunks]

    # -- chunks and enrichment ---------------------------------------------------------

    def _chunk_samples(self, track: _TrackClock) -> int:
        return track.sample_rate * self.chunk_ms // 1000

    def _chunks(self, track_id: Track, cuts: list[_ChunkCut], now_ms: int, final: bool = False) -> list[AudioChunk]:
        rate = self.tracks[track_id].sample_rate
        return [
            AudioChunk(
                contact_id=self.contact_id,
                track=track_id,
                seq=cut.seq,
                start_ms=cut.start_ms,
                sample_rate=rate,
                pcm=cut.pcm,
                final=final,
                info=self.info or ContactInfo(),
                attributes_missing=self.info is None,
                assembled_at_ms=now_ms,
                gap_filled_ms=(cut.gap_samples * 1000 + rate // 2) // rate,
                gap_filled_samples=cut.gap_samples,
            )
            for cut in cuts
        ]

    def _route(self, chunks: list[AudioChunk], now_ms: int) -> list[AssemblerOutput]:
        """Hold chunks while the attributes may still come; release them once they did
        or the wait (from the contact's first frame) is over."""
        if self.info is None and not self.enrichment_given_up:
            if self.first_frame_at_ms is None or now_ms < self.first_frame_at_ms + self.enrich_max_wait_ms:
                self.held.extend(chunks)
                return []
        return [*self._release_held(force=True), *chunks]

    def _release_held(self, force: bool = False) -> list[AssemblerOutput]:
        if self.info is None and not force:
            return []
        if self.info is None:
            self.enrichment_given_up = True
        info = self.info or ContactInfo()
        released: list[AssemblerOutput] = [
            replace(chunk, info=info, attributes_missing=self.info is None) for chunk in self.held
        ]
        self.held.clear()
        return released
