"""ContactAudioAssembler: the sample-clock chunker and enrichment hold (DESIGN §4, §5).

Hand-written scenarios pin the state machine step by step (what each input returns);
the hypothesis properties check the audio-integrity guarantee over random PCM, random
KVS block sizes, random chunk lengths, interleaved tracks, reconnect replays and random
arrival times of the STARTED event.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.assembler import (
    AudioChunk,
    CompletenessMismatch,
    ContactAudioAssembler,
    ContactClosed,
    ContactInfo,
)
from pipeline.records import AudioEnd, AudioFrame, ContactEvent, EventType, Track

FAST = settings(max_examples=40, deadline=None)

CONTACT = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
RATE = 8000
T0 = 1726677688724  # producer timestamp of the contact's first sample
FRAGMENT_BASE = 91343852333181432392682062622220590765191907586
WAIT = 2000

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


# -- helpers --------------------------------------------------------------------------------


def pcm_of(samples: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(2 * samples)


def fragment(k: int) -> str:
    return str(FRAGMENT_BASE + 1000 * k)


def split_frames(track: Track, pcm: bytes, sizes: list[int], per_fragment: int) -> list[AudioFrame]:
    """Cut one track's PCM into frames of the given sample counts (cycled), numbered as
    KVS would: frame_index restarts at 0 in every fragment, fragment numbers increase."""
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


class Driver:
    """Feeds an assembler like the Flink adapter does: processing-time timers fire at
    ``next_timer_ms()`` before any later input is processed."""

    def __init__(self, assembler: ContactAudioAssembler) -> None:
        self.assembler = assembler
        self.log: list[tuple[int, object]] = []

    def _timers(self, now: int) -> None:
        while (due := self.assembler.next_timer_ms()) is not None and due <= now:
            self.log.extend((due, o) for o in self.assembler.on_timer(due))
            if self.assembler.next_timer_ms() == due:
                break  # Flink fires a timestamp once; a timer that did nothing stays done.

    def frame(self, frame: AudioFrame, now: int) -> list:
        self._timers(now)
        out = self.assembler.on_frame(frame, now)
        self.log.extend((now, o) for o in out)
        return out

    def event(self, event: ContactEvent, now: int) -> list:
        self._timers(now)
        #: Log position of the last event: what comes after it was emitted after it.
        self.event_index = len(self.log)
        out = self.assembler.on_event(event, now)
        self.log.extend((now, o) for o in out)
        return out

    def end(self, end: AudioEnd, now: int) -> list:
        self._timers(now)
        out = self.assembler.on_end(end, now)
        self.log.extend((now, o) for o in out)
        return out

    @property
    def outputs(self) -> list:
        return [o for _, o in self.log]


# -- strategies -----------------------------------------------------------------------------


@st.composite
def track_inputs(draw, max_samples: int = 20_000):
    samples = draw(st.integers(0, max_samples))
    seed = draw(st.integers(0, 2**32))
    sizes = draw(st.lists(st.integers(1, 700), min_size=1, max_size=12))
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


def with_replays(rnd: random.Random, frames: list, replay_rate: float) -> tuple[list, int]:
    """After some frames, resend an earlier stretch of frames (both tracks), as a worker
    that reconnects from its last checkpoint does. Returns the delivery and how many
    frames were sent twice or more."""
    delivered, resent = [], 0
    for i, f in enumerate(frames):
        delivered.append(f)
        if rnd.random() < replay_rate:
            start = rnd.randint(max(0, i - 15), i)
            delivered.extend(frames[start : i + 1])
            resent += i + 1 - start
    return delivered, resent


# -- properties -----------------------------------------------------------------------------


@FAST
@given(
    customer=track_inputs(),
    agent=track_inputs(),
    chunk_ms=st.integers(20, 1000),
    replay_rate=st.sampled_from([0.0, 0.05, 0.3]),
    rnd=st.randoms(use_true_random=False),
)
def test_chunks_reassemble_to_the_input_exactly(customer, agent, chunk_ms, replay_rate, rnd):
    (c_pcm, c_sizes, c_per), (a_pcm, a_sizes, a_per) = customer, agent
    frames = interleave(
        rnd,
        split_frames(Track.CUSTOMER, c_pcm, c_sizes, c_per),
        split_frames(Track.AGENT, a_pcm, a_sizes, a_per),
    )
    delivery, resent = with_replays(rnd, frames, replay_rate)

    assembler = ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms, enrich_max_wait_ms=WAIT)
    drive = Driver(assembler)
    drive.event(STARTED, now=0)
    for i, f in enumerate(delivery):
        drive.frame(f, now=i)
    drive.end(end_for(len(c_pcm) // 2, len(a_pcm) // 2), now=len(delivery))
    outputs = drive.outputs

    check_track_integrity(outputs, Track.CUSTOMER, c_pcm, chunk_ms)
    check_track_integrity(outputs, Track.AGENT, a_pcm, chunk_ms)
    assert assembler.duplicates_dropped == resent
    assert not any(isinstance(o, CompletenessMismatch) for o in outputs)
    assert outputs[-1] == ContactClosed(CONTACT)
    assert sum(isinstance(o, ContactClosed) for o in outputs) == 1
    for c in chunks(outputs):
        assert c.info == STARTED_INFO
        assert c.attributes_missing is False


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

    assembler = ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms)
    assembler.on_event(STARTED, 0)
    for f in frames:
        assembler.on_frame(f, 1)
    out = assembler.on_end(end_for(claimed[Track.CUSTOMER], claimed[Track.AGENT]), 2)

    mismatches = [o for o in out if isinstance(o, CompletenessMismatch)]
    assert mismatches == [
        CompletenessMismatch(CONTACT, wrong_track, claimed[wrong_track], true_totals[wrong_track])
    ]
    assert out[-1] == ContactClosed(CONTACT)
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

    assembler = ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms, enrich_max_wait_ms=wait)
    drive = Driver(assembler)
    now = 0
    started_time = None
    for i, item in enumerate(inputs):
        now += gaps[i % len(gaps)]
        if isinstance(item, ContactEvent):
            drive.event(item, now)
            started_time = now
        else:
            drive.frame(item, now)
    end_time = now + 1
    drive.end(end_for(len(c_pcm) // 2, len(a_pcm) // 2), end_time)

    outputs = drive.outputs
    check_track_integrity(outputs, Track.CUSTOMER, c_pcm, chunk_ms)
    check_track_integrity(outputs, Track.AGENT, a_pcm, chunk_ms)
    assert outputs[-1] == ContactClosed(CONTACT)

    started_index = drive.event_index if started_time is not None else len(drive.log)
    emitted = [(i, t, o) for i, (t, o) in enumerate(drive.log) if isinstance(o, AudioChunk)]
    first_cut = min((o.assembled_at_ms for _, _, o in emitted), default=None)
    for i, t, c in emitted:
        if i >= started_index:
            assert c.attributes_missing is False
            assert c.info == STARTED_INFO
        else:
            assert c.attributes_missing is True
            assert c.info == ContactInfo()
            # Released without attributes only once the wait ran out, or by the END.
            assert t >= first_cut + wait or t == end_time
        # Never held longer than enrich_max_wait_ms.
        assert c.assembled_at_ms <= t <= c.assembled_at_ms + wait
    if started_time is not None and first_cut is not None and started_time < first_cut + wait:
        assert all(not c.attributes_missing for _, _, c in emitted)


# -- scenarios: the state machine step by step ------------------------------------------------


def frames_of(track: Track, sizes: list[int], seed: int = 1) -> tuple[bytes, list[AudioFrame]]:
    pcm = pcm_of(sum(sizes), seed)
    return pcm, split_frames(track, pcm, sizes, per_fragment=3)


def test_each_frame_returns_the_chunks_it_completes():
    # chunk_ms 20 = 160 samples at 8 kHz; frames of 100 samples complete a chunk at 200,
    # 400 and 500 samples; the END flushes the last 20 samples.
    pcm, frames = frames_of(Track.CUSTOMER, [100] * 5)
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
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
    a = ContactAudioAssembler(CONTACT, chunk_ms=50)  # 400 samples
    a.on_event(STARTED, 0)
    out = a.on_frame(frames[0], 1)
    assert [(c.seq, c.start_ms, c.pcm) for c in out] == [
        (0, T0, pcm[0:800]),
        (1, T0 + 50, pcm[800:1600]),
    ]


def test_tracks_have_separate_clocks():
    c_pcm, c_frames = frames_of(Track.CUSTOMER, [160, 160], seed=1)
    a_pcm, a_frames = frames_of(Track.AGENT, [80, 80, 80, 80], seed=2)
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
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
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
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
    assert a.duplicates_dropped == 4
    assert not any(isinstance(o, CompletenessMismatch) for o in out)


def test_end_totals_that_match_give_no_mismatch_and_close_the_contact():
    c_pcm, c_frames = frames_of(Track.CUSTOMER, [100, 100, 37])
    a_pcm, a_frames = frames_of(Track.AGENT, [64])
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
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
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
    a.on_event(STARTED, 0)
    a.on_frame(frames[0], 1)
    assert not any(isinstance(o, CompletenessMismatch) for o in a.on_end(end_for(160, 0), 2))

    b = ContactAudioAssembler(CONTACT, chunk_ms=20)
    b.on_event(STARTED, 0)
    b.on_frame(frames[0], 1)
    out = b.on_end(end_for(160, 800), 2)
    assert [o for o in out if isinstance(o, CompletenessMismatch)] == [
        CompletenessMismatch(CONTACT, Track.AGENT, expected_samples=800, assembled_samples=0)
    ]
    assert out[-1] == ContactClosed(CONTACT)


def test_frames_after_end_are_dropped_and_a_second_end_is_ignored():
    _, frames = frames_of(Track.CUSTOMER, [100, 100])
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
    a.on_event(STARTED, 0)
    a.on_frame(frames[0], 1)
    a.on_end(end_for(100, 0), 2)
    assert a.on_frame(frames[1], 3) == []
    assert a.on_end(end_for(200, 0), 4) == []


def test_ended_event_alone_neither_flushes_nor_closes():
    # The contact ends for the job when the connector's END record arrives after the
    # last frame; DISCONNECTED may overtake audio still in flight.
    _, frames = frames_of(Track.CUSTOMER, [100])
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
    a.on_event(STARTED, 0)
    a.on_frame(frames[0], 1)
    ended = ContactEvent(type=EventType.ENDED, contact_id=CONTACT, event_time_ms=T0 + 5000)
    assert a.on_event(ended, 2) == []
    out = a.on_end(end_for(100, 0), 3)
    assert out[-1] == ContactClosed(CONTACT) and chunks(out)[0].sample_count == 100


def test_attributes_from_started_reach_every_chunk():
    _, frames = frames_of(Track.AGENT, [160] * 3)
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
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
    a = ContactAudioAssembler(CONTACT, chunk_ms=20, enrich_max_wait_ms=WAIT)
    assert a.next_timer_ms() is None
    assert a.on_frame(frames[0], 1000) == []
    assert a.next_timer_ms() == 1000 + WAIT
    assert a.on_frame(frames[1], 1500) == []
    assert a.on_frame(frames[2], 2000) == []
    # The timer is measured from the first held chunk, not re-armed by later ones.
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


def test_held_audio_flows_flagged_after_the_wait_and_attributes_apply_once_they_come():
    pcm, frames = frames_of(Track.CUSTOMER, [160] * 4)
    a = ContactAudioAssembler(CONTACT, chunk_ms=20, enrich_max_wait_ms=WAIT)
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
    a = ContactAudioAssembler(CONTACT, chunk_ms=20, enrich_max_wait_ms=WAIT)
    assert a.on_frame(frames[0], 0) == []
    assert a.on_frame(frames[1], WAIT - 1) == []
    out = a.on_frame(frames[2], WAIT)
    assert [(c.seq, c.attributes_missing) for c in out] == [(0, True), (1, True), (2, True)]
    assert b"".join(c.pcm for c in out) == pcm


def test_end_releases_held_audio_before_the_final_chunks():
    pcm, frames = frames_of(Track.CUSTOMER, [160, 160, 50])
    a = ContactAudioAssembler(CONTACT, chunk_ms=20, enrich_max_wait_ms=WAIT)
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
    assert a.next_timer_ms() is None


def test_zero_wait_never_holds():
    _, frames = frames_of(Track.CUSTOMER, [160])
    a = ContactAudioAssembler(CONTACT, chunk_ms=20, enrich_max_wait_ms=0)
    assert [(c.seq, c.attributes_missing) for c in a.on_frame(frames[0], 5)] == [(0, True)]


def test_attributes_updated_merges_into_what_started_gave():
    _, frames = frames_of(Track.CUSTOMER, [160, 160])
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
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
    a = ContactAudioAssembler(CONTACT, chunk_ms=20)
    assert a.on_frame(frames[0], 0) == []
    update = ContactEvent(
        type=EventType.ATTRIBUTES_UPDATED, contact_id=CONTACT, event_time_ms=1, attributes={"a": "1"}
    )
    out = a.on_event(update, 1)
    assert [(c.seq, c.attributes_missing, c.info.attributes) for c in out] == [(0, False, {"a": "1"})]


@pytest.mark.parametrize("chunk_ms", [0, 19, 1001, -100])
def test_invalid_chunk_ms_raises(chunk_ms):
    with pytest.raises(ValueError, match="chunk_ms"):
        ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms)


@pytest.mark.parametrize("chunk_ms", [20, 1000])
def test_chunk_ms_limits_are_allowed(chunk_ms):
    assert ContactAudioAssembler(CONTACT, chunk_ms=chunk_ms).chunk_ms == chunk_ms
