"""Per-contact audio assembly: frames in, exact ``chunk_ms`` chunks out.

One ``ContactAudioAssembler`` holds everything the job knows about one contact: its
attributes (from contact events) and, per track, a sample clock that starts at the
contact's first frame. Chunks are cut on that clock, so every chunk but the last holds
exactly ``chunk_ms`` of samples whatever the KVS block sizes were.

The object is plain Python with no I/O; the Flink adapter keeps one per key in state and
passes the current processing time in, which keeps the logic testable without a JVM.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pipeline.records import AudioEnd, AudioFrame, ContactEvent, EventType, Track

MIN_CHUNK_MS = 20
MAX_CHUNK_MS = 1000


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
    #: Producer timestamp (epoch ms) of the chunk's first sample.
    start_ms: int
    sample_rate: int
    pcm: bytes
    final: bool
    info: ContactInfo
    #: True when the chunk left before the contact's STARTED event was seen.
    attributes_missing: bool
    #: Processing time at which the chunk was complete.
    assembled_at_ms: int
    gap_filled_ms: int = 0

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
    """The END record's totals disagree with the samples this assembler saw."""

    contact_id: str
    track: Track
    expected_samples: int
    assembled_samples: int


AssemblerOutput = AudioChunk | ContactClosed | CompletenessMismatch


@dataclass
class _TrackClock:
    sample_rate: int = 8000
    #: Producer timestamp of sample 0 of this track.
    origin_ms: int | None = None
    samples_emitted: int = 0
    next_seq: int = 0
    pending: bytearray = field(default_factory=bytearray)
    #: (fragment_number as int, frame_index) of the newest accepted frame: KVS replays
    #: after a reconnect start at an older fragment, and those frames must not count twice.
    last_frame_key: tuple[int, int] | None = None


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
        waiting for the attributes; after that it flows flagged ``attributes_missing``.
    """

    def __init__(self, contact_id: str, chunk_ms: int = 100, enrich_max_wait_ms: int = 2000) -> None:
        if not MIN_CHUNK_MS <= chunk_ms <= MAX_CHUNK_MS:
            raise ValueError(f"chunk_ms must be within {MIN_CHUNK_MS}–{MAX_CHUNK_MS}, got {chunk_ms}")
        self.contact_id = contact_id
        self.chunk_ms = chunk_ms
        self.enrich_max_wait_ms = enrich_max_wait_ms
        self.info: ContactInfo | None = None
        self.tracks: dict[Track, _TrackClock] = {}
        self.held: list[AudioChunk] = []
        self.held_since_ms: int | None = None
        self.enrichment_given_up = False
        self.ended = False
        self.duplicates_dropped = 0

    # -- inputs ------------------------------------------------------------------------

    def on_event(self, event: ContactEvent, now_ms: int) -> list[AssemblerOutput]:
        if event.type in (EventType.STARTED, EventType.ATTRIBUTES_UPDATED):
            base = self.info or ContactInfo()
            self.info = ContactInfo(
                instance_id=event.instance_id or base.instance_id,
                agent_id=event.agent_id or base.agent_id,
                queue_name=event.queue_name or base.queue_name,
                attributes={**base.attributes, **event.attributes},
            )
            return self._release_held()
        return []

    def on_frame(self, frame: AudioFrame, now_ms: int) -> list[AssemblerOutput]:
        if self.ended:
            self.duplicates_dropped += 1
            return []
        clock = self.tracks.setdefault(frame.track, _TrackClock(sample_rate=frame.sample_rate))
        key = (int(frame.fragment_number or 0), frame.frame_index)
        if clock.last_frame_key is not None and key <= clock.last_frame_key:
            self.duplicates_dropped += 1
            return []
        clock.last_frame_key = key
        if clock.origin_ms is None:
            clock.origin_ms = frame.producer_timestamp_ms
        clock.pending += frame.pcm
        chunk_bytes = self._chunk_samples(clock) * 2
        chunks = []
        while len(clock.pending) >= chunk_bytes:
            pcm = bytes(clock.pending[:chunk_bytes])
            del clock.pending[:chunk_bytes]
            chunks.append(self._cut(frame.track, clock, pcm, final=False, now_ms=now_ms))
        return self._route(chunks, now_ms)

    def on_end(self, end: AudioEnd, now_ms: int) -> list[AssemblerOutput]:
        """The connector's END record: flush the last partial chunks and check totals."""
        if self.ended:
            return []
        self.ended = True
        out: list[AssemblerOutput] = []
        chunks = []
        for track in Track:
            clock = self.tracks.get(track)
            if clock is None:
                continue
            chunks.append(self._cut(track, clock, bytes(clock.pending), final=True, now_ms=now_ms))
            clock.pending.clear()
        # The END closes the contact: attributes that never came will not come now.
        out.extend(self._release_held(force=True))
        out.extend(self._route(chunks, now_ms, force=True))
        for track in Track:
            clock = self.tracks.get(track)
            assembled = clock.samples_emitted if clock else 0
            if assembled != end.samples(track):
                out.append(
                    CompletenessMismatch(self.contact_id, track, end.samples(track), assembled)
                )
        out.append(ContactClosed(self.contact_id))
        return out

    def on_timer(self, now_ms: int) -> list[AssemblerOutput]:
        """Processing-time tick: let held audio go once the enrichment wait is over."""
        if self.held_since_ms is not None and now_ms - self.held_since_ms >= self.enrich_max_wait_ms:
            return self._release_held(force=True)
        return []

    def next_timer_ms(self) -> int | None:
        if self.held_since_ms is None:
            return None
        return self.held_since_ms + self.enrich_max_wait_ms

    # -- internals ---------------------------------------------------------------------

    def _chunk_samples(self, clock: _TrackClock) -> int:
        return clock.sample_rate * self.chunk_ms // 1000

    def _cut(self, track: Track, clock: _TrackClock, pcm: bytes, final: bool, now_ms: int) -> AudioChunk:
        start_ms = (clock.origin_ms or 0) + clock.samples_emitted * 1000 // clock.sample_rate
        chunk = AudioChunk(
            contact_id=self.contact_id,
            track=track,
            seq=clock.next_seq,
            start_ms=start_ms,
            sample_rate=clock.sample_rate,
            pcm=pcm,
            final=final,
            info=self.info or ContactInfo(),
            attributes_missing=self.info is None,
            assembled_at_ms=now_ms,
        )
        clock.next_seq += 1
        clock.samples_emitted += len(pcm) // 2
        return chunk

    def _route(self, chunks: list[AudioChunk], now_ms: int, force: bool = False) -> list[AssemblerOutput]:
        if not chunks:
            return []
        if self.info is not None or self.enrichment_given_up or force:
            return [*self._release_held(force=True), *chunks]
        if self.held_since_ms is None:
            self.held_since_ms = now_ms
        if now_ms - self.held_since_ms >= self.enrich_max_wait_ms:
            return [*self._release_held(force=True), *chunks]
        self.held.extend(chunks)
        return []

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
        self.held_since_ms = None
        return released
