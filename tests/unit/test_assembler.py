"""ContactAudioAssembler: the sample-clock chunker, reorder buffer and contact lifecycle
(DESIGN §2, §4, §5).

The hypothesis properties check the audio-integrity guarantee over random PCM, random
KVS block sizes, random chunk lengths and interleaved tracks, delivered in order, with
reconnect replays, reordered within the reorder window, and all of these at once (with
the state pickled between inputs, as the Flink adapter keeps it); frames lost for good
must become silence at their place on the clock. Hand-written scenarios pin the state
machine step by step, timers included, with the clock passed in.
"""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.assembler import (
    DEFAULT_REORDER_WINDOW_MS,
    DEFAULT_STATE_GRACE_MS,
    MAX_REORDER_FRAMES,
    AudioChunk,
    CompletenessMismatch,
    ContactAudioAssembler,
    ContactClosed,
    ContactExpired,
    ContactInfo,
    EndRecordMissing,
    Phase,
)
from pipeline.records import AudioEnd, AudioFrame, ContactEvent, EventType, Track

FAST = settings(max_examples=40, deadline=None)

CONTACT = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
RATE = 8000
T0 = 1726677688724  # producer timestamp of the contact's first sample
FRAGMENT_BASE = 91343852333181432392682062622220590765191907586
WAIT = 2000
WINDOW = DEFAULT_REORDER_WINDOW_MS
GRACE = DEFAULT_STATE_GRACE_MS
WINDOW_SAMPLES = RATE * WINDOW // 1000
#: An idle flush cuts a chunk short; properties about exact chunk lengths switch it off.
NEVER = 10**12
#: Frames shorter than the timestamp tolerance (about 1 ms) cannot be placed from
#: millisecond timestamps when their neighbour overtakes them (see the module's limits).
MIN_REORDERED_FRAME = 24

STARTED = ContactEvent(
    type=EventType.STARTED,
    contact_id=CONTACT,
    event_time_ms=T0,
    instance_id="d5b716a2-0000-4000-8000-000000000001",
    stream_arn="arn:aws:kinesisvideo:us-east-1:123456789012:stream/connect-pool-1/1690000000000",
    start_fragment_number=str(FRAGMENT_BASE),
    start_timestamp_ms=T0,
    attributes={"lang": "en-US", "tier": "gold"},
    queue_name="Billing",
)
STARTED_INFO = ContactInfo(
    instance_id="d5b716a2-0000-4000-8000-000000000001",
    agent_id="",
    queue_name="Billing",
    attributes={"lang": "en-US", "tier": "gold"},
)
ENDED = ContactEvent(type=EventType.ENDED, contact_id=CONTACT, event_time_ms=T0 + 5000)


# -- helpers --------------------------------------------------------------------------------


def pcm_of(samples: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(2 * samples)


def fragment(k: int) -> str:
    return str(FRAGMENT_BASE + 1000 * k)


def split_frames(track: Track, pcm: bytes, sizes: list[int], per_fragment: int) -> list[AudioFrame]:
    """Cut one track's PCM into frames of the given sample counts (cycled), numbered as
    KVS would: frame_index restarts at 0 in every fragment, fragment numbers increase,
    and each frame carries the millisecond timestamp of its first sample."""
    frames = []
    position = 0
    i = 0
    total = len(pcm) // 2
    while position < total:
        n = sizes[i % len(sizes)]
        frag, index = divmod(i, per_fragment)
        frames.append(
            AudioFrame(
                contact_id=CONTACT,
                track=track,
                fragment_number=fragment(frag),
                frame_index=index,
                producer_timestamp_ms=T0 + position * 1000 // RATE,
                sample_rate=RATE,
                pcm=pcm[2 * position : 2 * (position + n)],
            )
        )
        position += n
        i += 1
    return frames


def end_for(customer_samples: int, agent_samples: int) -> AudioEnd:
    return AudioEnd(
        contact_id=CONTACT,
        last_fragment_number=fragment(999),
        producer_timestamp_ms=T0 + 60_000,
        customer_samples=customer_samples,
        agent_samples=agent_samples,
        customer_frames=0,
        agent_frames=0,
        reason="end_of_contact",
    )


def chunks(outputs, track: Track | None = None) -> list[AudioChunk]:
    return [o for o in outputs if isinstance(o, AudioChunk) and (track is None or o.track is track)]


def check_track_integrity(outputs, track: Track, pcm: bytes, chunk_ms: int) -> None:
    """DESIGN §5 audio integrity plus the chunking contract of §4 for one track."""
    got = chunks(outputs, track)
    if not pcm:
        assert got == []
        return
    chunk_samples = RATE * chunk_ms // 1000
    assert b"".join(c.pcm for c in got) == pcm
    assert [c.seq for c in got] == list(range(len(got)))
    assert [c.final for c in got] == [False] * (len(got) - 1) + [True]
    for c in got[:-1]:
        assert c.sample_count == chunk_samples
        assert c.duration_ms == chunk_ms
    assert got[-1].sample_count < chunk_samples
    for c in got:
        assert c.contact_id == CONTACT
        assert c.sample_rate == RATE
        # The sample clock: chunk n starts n * chunk_ms after the first sample.
        assert c.start_ms == T0 + c.seq * chunk_ms


def in_order(chunk_ms: int = 20, **options) -> ContactAudioAssembler:
    """An assembler for step-by-step scenarios of in-order audio: without a reorder
    window each frame is on the clock as soon as it arrives."""
    return ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms, **{"reorder_window_ms": 0, **options})


def frame_at(track: Track, pcm: bytes, position: int, frag: int, index: int) -> AudioFrame:
    """A frame whose first sample is at ``position`` on the track's clock."""
    return AudioFrame(CONTACT, track, fragment(frag), index, T0 + position * 1000 // RATE, RATE, pcm)


class Driver:
    """Feeds an assembler like the Flink adapter does: processing-time timers fire at
    ``next_timer_ms()`` before any later input is processed, and with ``repickle`` the
    state goes through pickle before every input, as keyed state does."""

    def __init__(self, assembler: ContactAudioAssembler, repickle: bool = False) -> None:
        self.assembler = assembler
        self.repickle = repickle
        self.log: list[tuple[int, object]] = []
        self.event_index: int | None = None

    def _timers(self, now: int) -> None:
        while (due := self.assembler.next_timer_ms()) is not None and due <= now:
            self.log.extend((due, o) for o in self.assembler.on_timer(due))
            after = self.assembler.next_timer_ms()
            # Flink fires a timestamp once: a timer must do everything due by then.
            assert after is None or after > due

    def _step(self, now: int, handle, record) -> list:
        self._timers(now)
        if self.repickle:
            self.assembler = pickle.loads(pickle.dumps(self.assembler))
        out = handle(self.assembler)(record, now)
        self.log.extend((now, o) for o in out)
        return out

    def frame(self, frame: AudioFrame, now: int) -> list:
        return self._step(now, lambda a: a.on_frame, frame)

    def event(self, event: ContactEvent, now: int) -> list:
        self._timers(now)
        #: Log position of the last event: what comes after it was emitted after it.
        self.event_index = len(self.log)
        return self._step(now, lambda a: a.on_event, event)

    def end(self, end: AudioEnd, now: int) -> list:
        return self._step(now, lambda a: a.on_end, end)

    def tick(self, now: int) -> None:
        self._timers(now)

    @property
    def outputs(self) -> list:
        return [o for _, o in self.log]


# -- strategies and deliveries -------------------------------------------------------------


@st.composite
def track_inputs(draw, max_samples: int = 20_000, min_frame: int = 1):
    samples = draw(st.integers(0, max_samples))
    seed = draw(st.integers(0, 2**32))
    sizes = draw(st.lists(st.integers(min_frame, 700), min_size=1, max_size=12))
    per_fragment = draw(st.integers(1, 40))
    return pcm_of(samples, seed), sizes, per_fragment


def interleave(rnd: random.Random, a: list, b: list) -> list:
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and rnd.random() < 0.5):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def reorder_within(rnd: random.Random, frames: list[AudioFrame], rate: float, max_delay: int) -> list:
    """Hold back some frames by up to ``max_delay`` samples of audio, as a producer retry
    puts a frame behind its successors."""

    def arrival(i: int, f: AudioFrame) -> tuple[int, int]:
        delay = rnd.randint(1, max_delay) if rnd.random() < rate else 0
        return (f.producer_timestamp_ms - T0) * RATE // 1000 + delay, i

    return [f for _, f in sorted(((arrival(i, f), f) for i, f in enumerate(frames)), key=lambda p: p[0])]


def with_replays(rnd: random.Random, frames: list, replay_rate: float) -> tuple[list[tuple[int, AudioFrame]], int]:
    """After some frames, resend an earlier stretch of frames (both tracks), as a worker
    that reconnects from its last checkpoint does. Returns (arrival time, frame) pairs,
    replays arriving with the frame that triggered them, and how many frames were resent."""
    delivered, resent = [], 0
    for i, f in enumerate(frames):
        delivered.append((i, f))
        if rnd.random() < replay_rate:
            start = rnd.randint(max(0, i - 15), i)
            delivered.extend((i, g) for g in frames[start : i + 1])
            resent += i + 1 - start
    return delivered, resent


# -- properties: audio integrity ------------------------------------------------------------


def assemble_and_check(customer, agent, chunk_ms, rnd, replay_rate=0.0, reorder_rate=0.0, repickle=False):
    (c_pcm, c_sizes, c_per), (a_pcm, a_sizes, a_per) = customer, agent
    frames = interleave(
        rnd,
        split_frames(Track.CUSTOMER, c_pcm, c_sizes, c_per),
        split_frames(Track.AGENT, a_pcm, a_sizes, a_per),
    )
    # A quarter of the window: buffered audio then spans less than the window even
    # with a 700-sample frame on top, and the delay is far below it in time.
    frames = reorder_within(rnd, frames, reorder_rate, WINDOW_SAMPLES // 4)
    delivery, resent = with_replays(rnd, frames, replay_rate)

    drive = Driver(
        ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms, enrich_max_wait_ms=WAIT, idle_flush_ms=NEVER),
        repickle=repickle,
    )
    drive.event(STARTED, now=0)
    for now, f in delivery:
        drive.frame(f, now)
    end_time = len(frames) + 1
    drive.end(end_for(len(c_pcm) // 2, len(a_pcm) // 2), end_time)
    outputs = drive.outputs

    check_track_integrity(outputs, Track.CUSTOMER, c_pcm, chunk_ms)
    check_track_integrity(outputs, Track.AGENT, a_pcm, chunk_ms)
    assert all(c.gap_filled_samples == 0 and c.gap_filled_ms == 0 for c in chunks(outputs))
    stats = drive.assembler.stats
    assert stats.duplicates_dropped == resent
    assert (stats.overlap_samples_dropped, stats.late_frames_dropped, stats.frames_rejected) == (0, 0, 0)
    assert not any(isinstance(o, CompletenessMismatch) for o in outputs)
    assert outputs[-1] == ContactClosed(CONTACT)
    assert sum(isinstance(o, ContactClosed) for o in outputs) == 1
    for c in chunks(outputs):
        assert c.info == STARTED_INFO
        assert c.attributes_missing is False

    drive.tick(end_time + GRACE)
    assert drive.outputs[-1] == ContactExpired(CONTACT)
    assert drive.assembler.next_timer_ms() is None


@FAST
@given(customer=track_inputs(), agent=track_inputs(), chunk_ms=st.integers(20, 1000), rnd=st.randoms(use_true_random=False))
def test_in_order_frames_reassemble_exactly(customer, agent, chunk_ms, rnd):
    assemble_and_check(customer, agent, chunk_ms, rnd)


@FAST
@given(
    customer=track_inputs(),
    agent=track_inputs(),
    chunk_ms=st.integers(20, 1000),
    replay_rate=st.sampled_from([0.05, 0.3]),
    rnd=st.randoms(use_true_random=False),
)
def test_replayed_frames_are_dropped_and_counted(customer, agent, chunk_ms, replay_rate, rnd):
    assemble_and_check(customer, agent, chunk_ms, rnd, replay_rate=replay_rate)


@FAST
@given(
    customer=track_inputs(min_frame=MIN_REORDERED_FRAME),
    agent=track_inputs(min_frame=MIN_REORDERED_FRAME),
    chunk_ms=st.integers(20, 1000),
    reorder_rate=st.sampled_from([0.05, 0.3, 1.0]),
    rnd=st.randoms(use_true_random=False),
)
def test_frames_reordered_within_the_window_reassemble_exactly(customer, agent, chunk_ms, reorder_rate, rnd):
    assemble_and_check(customer, agent, chunk_ms, rnd, reorder_rate=reorder_rate)


@FAST
@given(
    customer=track_inputs(max_samples=12_000, min_frame=MIN_REORDERED_FRAME),
    agent=track_inputs(max_samples=12_000, min_frame=MIN_REORDERED_FRAME),
    chunk_ms=st.integers(20, 1000),
    replay_rate=st.sampled_from([0.05, 0.3]),
    reorder_rate=st.sampled_from([0.05, 0.3, 1.0]),
    repickle=st.booleans(),
    rnd=st.randoms(use_true_random=False),
)
def test_replays_and_reordering_together_reassemble_exactly(
    customer, agent, chunk_ms, replay_rate, reorder_rate, repickle, rnd
):
    assemble_and_check(
        customer, agent, chunk_ms, rnd, replay_rate=replay_rate, reorder_rate=reorder_rate, repickle=repickle
    )


@FAST
@given(
    # Whole milliseconds per frame, so the timestamps after the gap are exact.
    sizes=st.lists(st.integers(MIN_REORDERED_FRAME // 8, 87).map(lambda ms: 8 * ms), min_size=2, max_size=60),
    lost_start=st.floats(0, 1, exclude_max=True),
    lost_length=st.integers(1, 10),
    track=st.sampled_from(Track),
    chunk_ms=st.integers(20, 1000),
    seed=st.integers(0, 2**32),
    rnd=st.randoms(use_true_random=False),
)
def test_frames_lost_beyond_the_window_become_silence_on_the_clock(
    sizes, lost_start, lost_length, track, chunk_ms, seed, rnd
):
    pcm = pcm_of(sum(sizes), seed)
    frames = split_frames(track, pcm, sizes, per_fragment=rnd.randint(1, 40))
    # Not the first frame: nothing before it would say where the track starts.
    first_lost = 1 + int(lost_start * (len(frames) - 1))
    lost = range(first_lost, min(len(frames), first_lost + lost_length))
    hole_start = sum(sizes[: lost.start])
    hole_end = sum(sizes[: lost.stop])
    total = sum(sizes)
    hole = hole_end - hole_start
    if lost.stop < len(frames):
        expected = pcm[: 2 * hole_start] + bytes(2 * hole) + pcm[2 * hole_end :]
        filled = hole
    else:
        expected, filled = pcm[: 2 * hole_start], 0  # nothing came after: nothing to fill

    drive = Driver(ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms, idle_flush_ms=NEVER))
    drive.event(STARTED, 0)
    for i, f in enumerate(frames):
        if i not in lost:
            drive.frame(f, now=i)
    end_time = len(frames)
    drive.end(end_for(total if track is Track.CUSTOMER else 0, total if track is Track.AGENT else 0), end_time)
    # END's totals exceed what came, so the contact waits out the window for stragglers.
    assert not any(isinstance(o, ContactClosed) for o in drive.outputs)
    drive.tick(end_time + WINDOW)

    outputs = drive.outputs
    got = chunks(outputs, track)
    assert b"".join(c.pcm for c in got) == expected
    chunk_samples = RATE * chunk_ms // 1000
    assert [c.seq for c in got] == list(range(len(got)))
    assert all(c.sample_count == chunk_samples for c in got[:-1])
    # Later audio keeps its place on the clock.
    assert [c.start_ms for c in got] == [T0 + c.seq * chunk_ms for c in got]
    assert sum(c.gap_filled_samples for c in got) == filled
    gap_chunks = [c for c in got if c.gap_filled_samples]
    assert abs(sum(c.gap_filled_ms for c in gap_chunks) - filled * 1000 / RATE) <= len(gap_chunks) / 2
    assert [o for o in outputs if isinstance(o, CompletenessMismatch)] == [
        CompletenessMismatch(CONTACT, track, expected_samples=total, assembled_samples=total - hole)
    ]
    assert outputs[-1] == ContactClosed(CONTACT)


# -- properties: END totals and enrichment --------------------------------------------------


@FAST
@given(
    customer=track_inputs(max_samples=6000),
    agent=track_inputs(max_samples=6000),
    chunk_ms=st.integers(20, 1000),
    wrong_track=st.sampled_from(Track),
    delta=st.integers(-5000, 5000).filter(bool),
    rnd=st.randoms(use_true_random=False),
)
def test_end_totals_that_differ_give_one_mismatch(customer, agent, chunk_ms, wrong_track, delta, rnd):
    (c_pcm, c_sizes, c_per), (a_pcm, a_sizes, a_per) = customer, agent
    frames = interleave(
        rnd,
        split_frames(Track.CUSTOMER, c_pcm, c_sizes, c_per),
        split_frames(Track.AGENT, a_pcm, a_sizes, a_per),
    )
    true_totals = {Track.CUSTOMER: len(c_pcm) // 2, Track.AGENT: len(a_pcm) // 2}
    claimed = dict(true_totals)
    claimed[wrong_track] = max(0, claimed[wrong_track] + delta)
    if claimed[wrong_track] == true_totals[wrong_track]:
        claimed[wrong_track] += 1

    drive = Driver(ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms))
    drive.event(STARTED, 0)
    for f in frames:
        drive.frame(f, 1)
    drive.end(end_for(claimed[Track.CUSTOMER], claimed[Track.AGENT]), 2)
    drive.tick(2 + WINDOW)

    out = drive.outputs
    mismatches = [o for o in out if isinstance(o, CompletenessMismatch)]
    assert mismatches == [
        CompletenessMismatch(CONTACT, wrong_track, claimed[wrong_track], true_totals[wrong_track])
    ]
    assert out[-1] == ContactClosed(CONTACT)
    # Missing samples may still be in flight behind the END: the contact waits the window.
    closed_at = next(t for t, o in drive.log if isinstance(o, ContactClosed))
    assert closed_at == (2 + WINDOW if claimed[wrong_track] > true_totals[wrong_track] else 2)
    # The final chunks are not held back by the mismatch.
    for track, total in true_totals.items():
        finals = [c for c in chunks(out, track) if c.final]
        assert len(finals) == (1 if total else 0)


@FAST
@given(
    customer=track_inputs(max_samples=8000),
    agent=track_inputs(max_samples=8000),
    chunk_ms=st.integers(20, 1000),
    wait=st.integers(0, 3000),
    gaps=st.lists(st.integers(0, 400), min_size=1, max_size=8),
    started_at=st.one_of(st.none(), st.floats(0, 1)),
    rnd=st.randoms(use_true_random=False),
)
def test_enrichment_hold_is_bounded_and_never_loses_or_reorders_audio(
    customer, agent, chunk_ms, wait, gaps, started_at, rnd
):
    (c_pcm, c_sizes, c_per), (a_pcm, a_sizes, a_per) = customer, agent
    frames = interleave(
        rnd,
        split_frames(Track.CUSTOMER, c_pcm, c_sizes, c_per),
        split_frames(Track.AGENT, a_pcm, a_sizes, a_per),
    )
    inputs: list = list(frames)
    if started_at is not None:
        inputs.insert(int(started_at * len(frames)), STARTED)

    assembler = ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms, enrich_max_wait_ms=wait, idle_flush_ms=NEVER)
    drive = Driver(assembler)
    now = 0
    started_time = first_frame_time = None
    for i, item in enumerate(inputs):
        now += gaps[i % len(gaps)]
        if isinstance(item, ContactEvent):
            drive.event(item, now)
            started_time = now
        else:
            drive.frame(item, now)
            if first_frame_time is None:
                first_frame_time = now
    end_time = now + 1
    drive.end(end_for(len(c_pcm) // 2, len(a_pcm) // 2), end_time)

    outputs = drive.outputs
    check_track_integrity(outputs, Track.CUSTOMER, c_pcm, chunk_ms)
    check_track_integrity(outputs, Track.AGENT, a_pcm, chunk_ms)
    assert outputs[-1] == ContactClosed(CONTACT)

    started_index = drive.event_index if started_time is not None else len(drive.log)
    emitted = [(i, t, o) for i, (t, o) in enumerate(drive.log) if isinstance(o, AudioChunk)]
    for i, t, c in emitted:
        deadline = first_frame_time + wait
        if i >= started_index:
            assert c.attributes_missing is False
            assert c.info == STARTED_INFO
        else:
            assert c.attributes_missing is True
            assert c.info == ContactInfo()
            # Released without attributes only once the wait from the first frame ran
            # out, or by the END.
            assert t >= deadline or t == end_time
        # Never held past the wait, counted from the contact's first frame.
        assert c.assembled_at_ms <= t <= max(c.assembled_at_ms, deadline)
    if started_time is not None and first_frame_time is not None and started_time < first_frame_time + wait:
        assert all(not c.attributes_missing for _, _, c in emitted)


# -- scenarios: chunking and enrichment step by step ----------------------------------------


def frames_of(track: Track, sizes: list[int], seed: int = 1) -> tuple[bytes, list[AudioFrame]]:
    pcm = pcm_of(sum(sizes), seed)
    return pcm, split_frames(track, pcm, sizes, per_fragment=3)


def test_each_frame_returns_the_chunks_it_completes():
    # chunk_ms 20 = 160 samples at 8 kHz; frames of 100 samples complete a chunk at 200,
    # 400 and 500 samples; the END flushes the last 20 samples.
    pcm, frames = frames_of(Track.CUSTOMER, [100] * 5)
    a = in_order(chunk_ms=20)
    assert a.on_event(STARTED, 0) == []
    returned = [a.on_frame(f, 10 + i) for i, f in enumerate(frames)]
    assert [len(r) for r in returned] == [0, 1, 0, 1, 1]
    assert [r[0].pcm for r in returned if r] == [pcm[0:320], pcm[320:640], pcm[640:960]]
    assert [r[0].assembled_at_ms for r in returned if r] == [11, 13, 14]
    out = a.on_end(end_for(500, 0), 99)
    assert out == [
        AudioChunk(
            contact_id=CONTACT,
            track=Track.CUSTOMER,
            seq=3,
            start_ms=T0 + 60,
            sample_rate=RATE,
            pcm=pcm[960:1000],
            final=True,
            info=STARTED_INFO,
            attributes_missing=False,
            assembled_at_ms=99,
        ),
        ContactClosed(CONTACT),
    ]


def test_one_large_frame_gives_several_chunks_in_order():
    pcm, frames = frames_of(Track.AGENT, [1000])
    a = in_order(chunk_ms=50)  # 400 samples
    a.on_event(STARTED, 0)
    out = a.on_frame(frames[0], 1)
    assert [(c.seq, c.start_ms, c.pcm) for c in out] == [
        (0, T0, pcm[0:800]),
        (1, T0 + 50, pcm[800:1600]),
    ]


def test_tracks_have_separate_clocks():
    c_pcm, c_frames = frames_of(Track.CUSTOMER, [160, 160], seed=1)
    a_pcm, a_frames = frames_of(Track.AGENT, [80, 80, 80, 80], seed=2)
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    out = []
    for f in interleave(random.Random(3), c_frames, a_frames):
        out += a.on_frame(f, 1)
    assert [(c.track, c.seq, c.pcm) for c in chunks(out, Track.CUSTOMER)] == [
        (Track.CUSTOMER, 0, c_pcm[:320]),
        (Track.CUSTOMER, 1, c_pcm[320:]),
    ]
    assert [(c.track, c.seq, c.pcm) for c in chunks(out, Track.AGENT)] == [
        (Track.AGENT, 0, a_pcm[:320]),
        (Track.AGENT, 1, a_pcm[320:]),
    ]


def test_replayed_frames_are_dropped_and_new_ones_continue():
    pcm, frames = frames_of(Track.CUSTOMER, [40] * 8)  # fragments of 3 frames
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    out = []
    for f in frames[:5]:
        out += a.on_frame(f, 1)
    # The worker reconnects and starts again at the second fragment (frames 3, 4, ...).
    assert frames[3].fragment_number == frames[4].fragment_number != frames[2].fragment_number
    for f in frames[3:5]:
        assert a.on_frame(f, 2) == []
    for f in frames[3:]:
        out += a.on_frame(f, 3)
    out += a.on_end(end_for(320, 0), 4)
    assert b"".join(c.pcm for c in chunks(out)) == pcm
    assert a.stats.duplicates_dropped == 4
    assert not any(isinstance(o, CompletenessMismatch) for o in out)


def test_end_totals_that_match_give_no_mismatch_and_close_the_contact():
    c_pcm, c_frames = frames_of(Track.CUSTOMER, [100, 100, 37])
    a_pcm, a_frames = frames_of(Track.AGENT, [64])
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    for f in c_frames + a_frames:
        a.on_frame(f, 1)
    out = a.on_end(end_for(237, 64), 2)
    assert [(type(o).__name__, getattr(o, "track", None)) for o in out] == [
        ("AudioChunk", Track.CUSTOMER),
        ("AudioChunk", Track.AGENT),
        ("ContactClosed", None),
    ]
    assert out[0].final and out[0].pcm == c_pcm[2 * 160 :]
    assert out[1].final and out[1].pcm == a_pcm


def test_end_with_a_track_that_never_sent_audio():
    _, frames = frames_of(Track.CUSTOMER, [160])
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    a.on_frame(frames[0], 1)
    assert not any(isinstance(o, CompletenessMismatch) for o in a.on_end(end_for(160, 0), 2))

    b = in_order(chunk_ms=20)
    b.on_event(STARTED, 0)
    b.on_frame(frames[0], 1)
    out = b.on_end(end_for(160, 800), 2)
    assert [o for o in out if isinstance(o, CompletenessMismatch)] == [
        CompletenessMismatch(CONTACT, Track.AGENT, expected_samples=800, assembled_samples=0)
    ]
    assert out[-1] == ContactClosed(CONTACT)


def test_frames_after_end_are_dropped_and_a_second_end_is_ignored():
    _, frames = frames_of(Track.CUSTOMER, [100, 100])
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    a.on_frame(frames[0], 1)
    a.on_end(end_for(100, 0), 2)
    assert a.on_frame(frames[1], 3) == []
    assert a.stats.duplicates_dropped == 1
    assert a.on_end(end_for(200, 0), 4) == []


def test_ended_event_alone_neither_flushes_nor_closes():
    # The contact ends for the job when the connector's END record arrives after the
    # last frame; DISCONNECTED may overtake audio still in flight.
    _, frames = frames_of(Track.CUSTOMER, [100, 100])
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    a.on_frame(frames[0], 1)
    assert a.on_event(ENDED, 2) == []
    assert a.phase is Phase.DISCONNECTED
    assert [c.seq for c in a.on_frame(frames[1], 3)] == [0]  # audio in flight still counts
    out = a.on_end(end_for(200, 0), 4)
    assert out[-1] == ContactClosed(CONTACT) and chunks(out)[0].sample_count == 40


def test_attributes_from_started_reach_every_chunk():
    _, frames = frames_of(Track.AGENT, [160] * 3)
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    out = []
    for f in frames:
        out += a.on_frame(f, 1)
    out += a.on_end(end_for(0, 480), 2)
    assert len(chunks(out)) == 4
    for c in chunks(out):
        assert c.info == STARTED_INFO
        assert c.attributes_missing is False


def test_audio_before_started_is_held_then_released_in_order_with_attributes():
    pcm, frames = frames_of(Track.CUSTOMER, [160] * 4)
    a = in_order(chunk_ms=20, enrich_max_wait_ms=WAIT)
    assert a.next_timer_ms() is None
    assert a.on_frame(frames[0], 1000) == []
    assert a.next_timer_ms() == 1000 + WAIT
    assert a.on_frame(frames[1], 1500) == []
    assert a.on_frame(frames[2], 2000) == []
    # The wait is measured from the first frame, not re-armed by later ones.
    assert a.next_timer_ms() == 1000 + WAIT
    assert a.on_timer(1000 + WAIT - 1) == []

    released = a.on_event(STARTED, 2500)
    assert [c.seq for c in released] == [0, 1, 2]
    assert b"".join(c.pcm for c in released) == pcm[: 3 * 320]
    assert all(c.info == STARTED_INFO and not c.attributes_missing for c in released)
    assert [c.assembled_at_ms for c in released] == [1000, 1500, 2000]
    assert a.next_timer_ms() is None

    after = a.on_frame(frames[3], 2600)
    assert [(c.seq, c.info, c.attributes_missing) for c in after] == [(3, STARTED_INFO, False)]
    assert a.on_timer(1000 + WAIT) == []


def test_enrichment_wait_counts_from_the_first_frame_not_the_first_chunk():
    pcm, frames = frames_of(Track.CUSTOMER, [100, 100, 120])
    a = in_order(chunk_ms=20, enrich_max_wait_ms=WAIT, idle_flush_ms=NEVER)
    assert a.on_frame(frames[0], 1000) == []  # no chunk yet, but the wait has begun
    assert a.on_frame(frames[1], 1400) == []  # chunk 0, held
    assert a.next_timer_ms() == 1000 + WAIT
    released = a.on_timer(1000 + WAIT)
    assert [(c.seq, c.attributes_missing, c.assembled_at_ms) for c in released] == [(0, True, 1400)]
    assert [(c.seq, c.attributes_missing) for c in a.on_frame(frames[2], 1000 + WAIT + 1)] == [(1, True)]


def test_held_audio_flows_flagged_after_the_wait_and_attributes_apply_once_they_come():
    pcm, frames = frames_of(Track.CUSTOMER, [160] * 4)
    a = in_order(chunk_ms=20, enrich_max_wait_ms=WAIT)
    assert a.on_frame(frames[0], 1000) == []
    assert a.on_frame(frames[1], 1200) == []
    deadline = a.next_timer_ms()
    assert deadline == 1000 + WAIT

    released = a.on_timer(deadline)
    assert [(c.seq, c.attributes_missing, c.info) for c in released] == [
        (0, True, ContactInfo()),
        (1, True, ContactInfo()),
    ]
    assert a.next_timer_ms() is None
    # Once the wait is given up, audio no longer waits.
    flowing = a.on_frame(frames[2], deadline + 10)
    assert [(c.seq, c.attributes_missing) for c in flowing] == [(2, True)]
    assert a.next_timer_ms() is None

    assert a.on_event(STARTED, deadline + 20) == []
    enriched = a.on_frame(frames[3], deadline + 30)
    assert [(c.seq, c.attributes_missing, c.info) for c in enriched] == [(3, False, STARTED_INFO)]
    assert b"".join(c.pcm for c in released + flowing + enriched) == pcm


def test_held_audio_is_released_by_a_late_frame_when_no_timer_fired():
    pcm, frames = frames_of(Track.CUSTOMER, [160] * 3)
    a = in_order(chunk_ms=20, enrich_max_wait_ms=WAIT)
    assert a.on_frame(frames[0], 0) == []
    assert a.on_frame(frames[1], WAIT - 1) == []
    out = a.on_frame(frames[2], WAIT)
    assert [(c.seq, c.attributes_missing) for c in out] == [(0, True), (1, True), (2, True)]
    assert b"".join(c.pcm for c in out) == pcm


def test_end_releases_held_audio_before_the_final_chunks():
    pcm, frames = frames_of(Track.CUSTOMER, [160, 160, 50])
    a = in_order(chunk_ms=20, enrich_max_wait_ms=WAIT)
    for f in frames:
        assert a.on_frame(f, 10) == []
    out = a.on_end(end_for(370, 0), 20)
    assert [(c.seq, c.final, c.attributes_missing) for c in chunks(out)] == [
        (0, False, True),
        (1, False, True),
        (2, True, True),
    ]
    assert b"".join(c.pcm for c in chunks(out)) == pcm
    assert out[-1] == ContactClosed(CONTACT)
    assert a.next_timer_ms() == 20 + GRACE  # only the state's expiry is left


def test_zero_wait_never_holds():
    _, frames = frames_of(Track.CUSTOMER, [160])
    a = in_order(chunk_ms=20, enrich_max_wait_ms=0)
    assert [(c.seq, c.attributes_missing) for c in a.on_frame(frames[0], 5)] == [(0, True)]


def test_attributes_updated_merges_into_what_started_gave():
    _, frames = frames_of(Track.CUSTOMER, [160, 160])
    a = in_order(chunk_ms=20)
    a.on_event(STARTED, 0)
    first = a.on_frame(frames[0], 1)
    update = ContactEvent(
        type=EventType.ATTRIBUTES_UPDATED,
        contact_id=CONTACT,
        event_time_ms=T0 + 1000,
        agent_id="agent-7",
        attributes={"tier": "platinum", "intent": "refund"},
    )
    assert a.on_event(update, 2) == []
    second = a.on_frame(frames[1], 3)
    assert first[0].info == STARTED_INFO
    assert second[0].info == ContactInfo(
        instance_id=STARTED_INFO.instance_id,  # kept: the update left it empty
        agent_id="agent-7",
        queue_name="Billing",
        attributes={"lang": "en-US", "tier": "platinum", "intent": "refund"},
    )
    assert second[0].attributes_missing is False


def test_attributes_updated_before_started_also_releases_held_audio():
    _, frames = frames_of(Track.CUSTOMER, [160])
    a = in_order(chunk_ms=20)
    assert a.on_frame(frames[0], 0) == []
    update = ContactEvent(
        type=EventType.ATTRIBUTES_UPDATED, contact_id=CONTACT, event_time_ms=1, attributes={"a": "1"}
    )
    out = a.on_event(update, 1)
    assert [(c.seq, c.attributes_missing, c.info.attributes) for c in out] == [(0, False, {"a": "1"})]


# -- scenarios: the reorder buffer, replays by position and gaps ----------------------------


def started(assembler: ContactAudioAssembler) -> ContactAudioAssembler:
    assembler.on_event(STARTED, 0)
    return assembler


def test_first_frame_waits_for_the_window_so_an_earlier_fragment_can_still_come_first():
    pcm = pcm_of(800)
    first, second = frame_at(Track.CUSTOMER, pcm[:800], 0, 0, 0), frame_at(Track.CUSTOMER, pcm[800:], 400, 1, 0)
    a = started(ContactAudioAssembler(CONTACT, chunk_ms=20))
    # A producer retry delivered the second fragment first; nothing says it is not the start.
    assert a.on_frame(second, 100) == []
    assert a.next_timer_ms() == 100 + WINDOW
    out = a.on_frame(first, 150)
    assert out == []  # in order now, but still within the window of the track's start
    out = a.on_timer(100 + WINDOW)
    assert b"".join(c.pcm for c in out) == pcm
    assert [c.start_ms for c in out] == [T0 + 20 * i for i in range(5)]


def test_first_frames_are_released_once_they_span_the_window():
    pcm, frames = frames_of(Track.CUSTOMER, [400] * 11)  # 50 ms frames
    a = started(ContactAudioAssembler(CONTACT, chunk_ms=100))
    returned = [a.on_frame(f, 1) for f in frames]
    # 10 frames span 500 ms: the window has passed and everything so far goes on the clock.
    assert [len(r) for r in returned] == [0] * 9 + [5, 0]
    assert b"".join(c.pcm for c in returned[9]) == pcm[: 2 * 4000]


def test_frame_overtaken_within_its_fragment_waits_for_its_predecessor():
    pcm, frames = frames_of(Track.AGENT, [80] * 6)  # fragments of 3 frames
    a = started(in_order(chunk_ms=20, reorder_window_ms=WINDOW))
    out = a.on_frame(frames[0], 0) + a.on_timer(WINDOW)
    assert out == []  # 80 samples: no chunk yet, but the track's clock has started
    assert a.on_frame(frames[2], WINDOW + 1) == []  # frame_index 2 after 0: 1 is missing
    out = a.on_frame(frames[1], WINDOW + 2)
    assert [c.pcm for c in out] == [pcm[0:320]]
    for f in frames[3:]:
        out += a.on_frame(f, WINDOW + 3)
    out += a.on_end(end_for(0, 480), WINDOW + 4)
    assert b"".join(c.pcm for c in chunks(out)) == pcm
    assert a.stats.duplicates_dropped == 0


def test_frame_overtaken_across_a_fragment_boundary_waits_by_its_timestamp():
    pcm = pcm_of(480)
    frames = [frame_at(Track.CUSTOMER, pcm[2 * p : 2 * (p + 160)], p, k, 0) for k, p in enumerate((0, 160, 320))]
    a = started(ContactAudioAssembler(CONTACT, chunk_ms=20))
    assert a.on_frame(frames[0], 0) == []
    assert [c.pcm for c in a.on_timer(WINDOW)] == [pcm[:320]]
    assert a.on_frame(frames[2], WINDOW + 1) == []  # a new fragment, but 160 samples ahead
    out = a.on_frame(frames[1], WINDOW + 2)
    assert [c.pcm for c in out] == [pcm[320:640], pcm[640:960]]


def test_missing_frame_becomes_silence_when_the_window_passes_in_processing_time():
    pcm, frames = frames_of(Track.CUSTOMER, [160] * 3)
    a = started(in_order(chunk_ms=20, reorder_window_ms=WINDOW))
    assert a.on_frame(frames[0], 0) == []  # the track's start waits for the window
    assert [c.seq for c in a.on_timer(WINDOW)] == [0]
    assert a.on_frame(frames[2], 1000) == []  # frames[1] is missing
    assert a.next_timer_ms() == 1000 + WINDOW
    assert a.on_timer(1000 + WINDOW - 1) == []
    out = a.on_timer(1000 + WINDOW)
    assert [(c.seq, c.start_ms, c.pcm, c.gap_filled_ms, c.gap_filled_samples) for c in out] == [
        (1, T0 + 20, bytes(320), 20, 160),
        (2, T0 + 40, pcm[640:960], 0, 0),
    ]
    assert a.next_timer_ms() is None
    # The lost frame turns up after all: its place on the clock is taken, it is dropped.
    assert a.on_frame(frames[1], 1000 + WINDOW + 1) == []
    assert a.stats.duplicates_dropped == 1
    end_time = 1000 + WINDOW + 2
    assert a.on_end(end_for(480, 0), end_time) == []
    out = a.on_timer(end_time + WINDOW)
    assert [(c.seq, c.final, c.sample_count) for c in chunks(out)] == [(3, True, 0)]
    assert [o for o in out if isinstance(o, CompletenessMismatch)] == [
        CompletenessMismatch(CONTACT, Track.CUSTOMER, expected_samples=480, assembled_samples=320)
    ]


def test_missing_frame_becomes_silence_once_later_audio_spans_the_window():
    sizes = [400] * 14  # 50 ms frames
    pcm, frames = frames_of(Track.AGENT, sizes)
    a = started(ContactAudioAssembler(CONTACT, chunk_ms=100, idle_flush_ms=NEVER))
    out = []
    for f in frames[:10]:
        out += a.on_frame(f, 0)
    assert len(out) == 5
    # Frame 10 is lost; frames 11-13 span 150 ms, not yet the window.
    for f in frames[11:14]:
        assert a.on_frame(f, 1) == []
    more_pcm = pcm_of(2400, seed=9)
    out = a.on_frame(frame_at(Track.AGENT, more_pcm, 14 * 400, 99, 0), 2)  # 300 ms more
    assert b"".join(c.pcm for c in out) == bytes(800) + pcm[2 * 4400 :] + more_pcm
    assert [(c.seq, c.start_ms, c.gap_filled_samples, c.gap_filled_ms) for c in out] == [
        (5, T0 + 500, 400, 50),
        (6, T0 + 600, 0, 0),
        (7, T0 + 700, 0, 0),
        (8, T0 + 800, 0, 0),
        (9, T0 + 900, 0, 0),
    ]


def test_partially_overlapping_frame_contributes_only_its_new_samples():
    pcm = pcm_of(400)
    a = started(in_order(chunk_ms=20))
    out = a.on_frame(frame_at(Track.CUSTOMER, pcm[: 2 * 160], 0, 0, 0), 0)
    # A frame of another fragment that starts 80 samples (10 ms) back.
    out += a.on_frame(frame_at(Track.CUSTOMER, pcm[2 * 80 : 2 * 320], 80, 1, 0), 1)
    # One wholly inside assembled audio: a duplicate, whatever its key.
    out += a.on_frame(frame_at(Track.CUSTOMER, pcm[2 * 160 : 2 * 240], 160, 2, 0), 2)
    out += a.on_frame(frame_at(Track.CUSTOMER, pcm[2 * 320 :], 320, 3, 0), 3)
    # Completeness counts each sample once, however many frames carried it.
    out += a.on_end(end_for(400, 0), 4)
    assert b"".join(c.pcm for c in chunks(out)) == pcm
    assert a.stats.overlap_samples_dropped == 80
    assert a.stats.duplicates_dropped == 1
    assert not any(isinstance(o, CompletenessMismatch) for o in out)


def test_frame_from_before_the_track_start_is_late_once_the_clock_runs():
    pcm = pcm_of(320)
    a = started(in_order(chunk_ms=20))
    out = a.on_frame(frame_at(Track.CUSTOMER, pcm[: 2 * 160], 0, 1, 0), 0)
    assert a.on_frame(frame_at(Track.CUSTOMER, pcm_of(160, seed=5), -160, 0, 0), 1) == []
    assert a.stats.late_frames_dropped == 1
    out += a.on_frame(frame_at(Track.CUSTOMER, pcm[2 * 160 :], 160, 1, 1), 2)
    assert b"".join(c.pcm for c in out) == pcm


def test_reorder_buffer_is_bounded_by_frame_count():
    a = started(ContactAudioAssembler(CONTACT, chunk_ms=1000, reorder_window_ms=10_000, idle_flush_ms=NEVER))
    # Frames that never provably follow one another (each is frame 1 of its fragment)
    # and together span far less than the window.
    for k in range(MAX_REORDER_FRAMES + 50):
        a.on_frame(frame_at(Track.CUSTOMER, bytes(16), 8 * k, k, 1), 0)
        assert len(a.tracks[Track.CUSTOMER].reorder) <= MAX_REORDER_FRAMES


def test_frames_that_contradict_their_track_are_rejected():
    a = started(in_order(chunk_ms=20))
    a.on_frame(frame_at(Track.CUSTOMER, bytes(320), 0, 0, 0), 0)
    other_rate = AudioFrame(CONTACT, Track.CUSTOMER, fragment(0), 1, T0 + 20, 16000, bytes(320))
    odd = frame_at(Track.AGENT, bytes(7), 0, 0, 0)
    assert a.on_frame(other_rate, 1) == [] and a.on_frame(odd, 2) == []
    assert a.stats.frames_rejected == 2
    assert Track.AGENT not in a.tracks


# -- scenarios: timers and the contact lifecycle ---------------------------------------------


def test_idle_flush_emits_the_partial_chunk_and_the_clock_continues():
    pcm, frames = frames_of(Track.CUSTOMER, [100, 100, 200])
    a = started(in_order(chunk_ms=20, idle_flush_ms=1000))
    assert a.on_frame(frames[0], 0) == []
    assert a.next_timer_ms() == 1000
    assert [c.sample_count for c in a.on_frame(frames[1], 300)] == [160]
    assert a.next_timer_ms() == 1300  # measured from the last frame
    assert a.on_timer(1299) == []
    flushed = a.on_timer(1300)
    assert [(c.seq, c.start_ms, c.pcm, c.final) for c in flushed] == [(1, T0 + 20, pcm[320:400], False)]
    assert a.next_timer_ms() is None
    out = a.on_frame(frames[2], 5000)
    # The next chunk starts where the flushed one ended: 200 samples, 25 ms in.
    assert [(c.seq, c.start_ms, c.pcm) for c in out] == [(2, T0 + 25, pcm[400:720])]
    final = a.on_end(end_for(400, 0), 5001)
    assert [(c.seq, c.final, c.pcm) for c in chunks(final)] == [(3, True, pcm[720:])]


def test_end_waits_the_window_for_frames_its_totals_still_count():
    pcm, frames = frames_of(Track.CUSTOMER, [160] * 3)
    a = started(in_order(chunk_ms=20, reorder_window_ms=WINDOW))
    a.on_frame(frames[0], 0)
    a.on_timer(WINDOW)
    a.on_frame(frames[1], 600)
    # A producer retry put the last frame behind the END record.
    assert a.on_end(end_for(480, 0), 700) == []
    assert a.phase is Phase.DRAINING
    assert a.next_timer_ms() == 700 + WINDOW
    out = a.on_frame(frames[2], 800)
    assert [(c.seq, c.final) for c in chunks(out)] == [(2, False), (3, True)]
    assert out[-1] == ContactClosed(CONTACT)
    assert not any(isinstance(o, CompletenessMismatch) for o in out)
    assert a.next_timer_ms() == 700 + GRACE


def test_end_gives_up_waiting_after_the_window_and_reports_the_shortfall():
    _, frames = frames_of(Track.CUSTOMER, [160, 160])
    a = started(in_order(chunk_ms=20, reorder_window_ms=WINDOW))
    a.on_frame(frames[0], 0)
    a.on_frame(frames[1], 1)
    assert [c.seq for c in a.on_timer(WINDOW)] == [0, 1]
    end_time = WINDOW + 10
    assert a.on_end(end_for(500, 0), end_time) == []
    assert a.on_timer(end_time + WINDOW - 1) == []
    out = a.on_timer(end_time + WINDOW)
    assert [o for o in out if isinstance(o, CompletenessMismatch)] == [
        CompletenessMismatch(CONTACT, Track.CUSTOMER, expected_samples=500, assembled_samples=320)
    ]
    assert out[-1] == ContactClosed(CONTACT)


def test_state_expires_a_grace_period_after_end():
    _, frames = frames_of(Track.CUSTOMER, [160])
    a = started(in_order(chunk_ms=20, state_grace_ms=GRACE))
    a.on_frame(frames[0], 0)
    assert a.on_end(end_for(160, 0), 100)[-1] == ContactClosed(CONTACT)
    assert a.next_timer_ms() == 100 + GRACE
    # Until then a replay of the whole contact is recognised and dropped.
    assert a.on_frame(frames[0], 200) == []
    assert a.on_timer(100 + GRACE - 1) == []
    assert a.on_timer(100 + GRACE) == [ContactExpired(CONTACT)]
    assert a.phase is Phase.EXPIRED
    assert a.next_timer_ms() is None
    assert a.on_timer(100 + 2 * GRACE) == []
    assert a.on_end(end_for(160, 0), 100 + 2 * GRACE) == []


def test_ended_without_end_record_closes_and_expires_after_the_grace_period():
    pcm, frames = frames_of(Track.CUSTOMER, [160, 100])
    a = started(in_order(chunk_ms=20, idle_flush_ms=NEVER))
    a.on_frame(frames[0], 0)
    a.on_frame(frames[1], 1)
    assert a.on_event(ENDED, 50) == []
    assert a.next_timer_ms() == 50 + GRACE
    assert a.on_timer(50 + GRACE - 1) == []
    out = a.on_timer(50 + GRACE)
    assert [(c.seq, c.final, c.pcm) for c in chunks(out)] == [(1, True, pcm[320:])]
    assert out[1:] == [
        EndRecordMissing(CONTACT, customer_samples=260, agent_samples=0),
        ContactClosed(CONTACT),
        ContactExpired(CONTACT),
    ]
    assert a.next_timer_ms() is None


def test_audio_still_arriving_after_ended_holds_the_end_record_wait_open():
    """A backlog longer than the grace (a job restored minutes later) is worked off after
    the ENDED event; the contact waits for END from its last frame, not from ENDED."""
    pcm, frames = frames_of(Track.CUSTOMER, [160, 160, 160])
    a = started(in_order(chunk_ms=20, idle_flush_ms=NEVER))
    out = a.on_frame(frames[0], 0)
    assert a.on_event(ENDED, 10) == []
    late = 10 + GRACE - 1
    out += a.on_frame(frames[1], late)
    out += a.on_frame(frames[2], late + GRACE - 1)
    assert a.next_timer_ms() == late + 2 * GRACE - 1
    assert a.on_timer(late + 2 * GRACE - 2) == []
    assert a.phase is Phase.DISCONNECTED
    out += a.on_timer(late + 2 * GRACE - 1)
    assert b"".join(c.pcm for c in chunks(out)) == pcm
    assert out[-3:] == [
        EndRecordMissing(CONTACT, customer_samples=480, agent_samples=0),
        ContactClosed(CONTACT),
        ContactExpired(CONTACT),
    ]


def test_ended_then_end_closes_normally_and_expires_after_end():
    _, frames = frames_of(Track.CUSTOMER, [160])
    a = started(in_order(chunk_ms=20))
    a.on_frame(frames[0], 0)
    a.on_event(ENDED, 10)
    out = a.on_end(end_for(160, 0), 5000)
    assert out[-1] == ContactClosed(CONTACT)
    assert not any(isinstance(o, (CompletenessMismatch, EndRecordMissing)) for o in out)
    assert a.next_timer_ms() == 5000 + GRACE


def test_contact_without_audio_closes_on_its_end_record():
    a = started(ContactAudioAssembler(CONTACT))
    assert a.on_end(end_for(0, 0), 5) == [ContactClosed(CONTACT)]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_ms", [0, 19, 1001, -100])
def test_invalid_chunk_ms_raises(chunk_ms):
    with pytest.raises(ValueError, match="chunk_ms"):
        ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms)


@pytest.mark.parametrize("chunk_ms", [20, 1000])
def test_chunk_ms_limits_are_allowed(chunk_ms):
    assert ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms).chunk_ms == chunk_ms


@pytest.mark.parametrize(
    "options, name",
    [
        ({"reorder_window_ms": -1}, "reorder_window_ms"),
        ({"reorder_window_ms": 10_001}, "reorder_window_ms"),
        ({"idle_flush_ms": 0}, "idle_flush_ms"),
        ({"state_grace_ms": -1}, "state_grace_ms"),
        ({"enrich_max_wait_ms": -1}, "enrich_max_wait_ms"),
    ],
)
def test_invalid_timing_options_raise(options, name):
    with pytest.raises(ValueError, match=name):
        ContactAudioAssembler(CONTACT, **options)
