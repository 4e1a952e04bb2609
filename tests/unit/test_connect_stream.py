"""ConnectContactStream over the real MKV parser, fed bytes the way GetMedia cuts them."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.connect_stream import ConnectContactStream, EndReason, StreamState
from pipeline.mkv import BlockSpec, MkvStreamParser, TrackSpec, write_connect_fragment, write_fragment
from pipeline.records import AudioEnd, AudioFrame, Track, decode_audio_record

CONTACT = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
OTHER_CONTACT = "8e3c1c1e-0000-4000-8000-000000000001"
T0 = 1_726_677_688_724
FIRST_NUMBER = 91343852333181432392682062607743920146264440000


def pcm(seed: int, seconds: float = 0.5, sample_rate: int = 8000) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(int(sample_rate * seconds) * 2)


def number(index: int) -> str:
    return str(FIRST_NUMBER + index * 1000)


def fragment(
    contact_id: str = CONTACT,
    index: int = 0,
    customer: bytes | None = None,
    agent: bytes | None = None,
    *,
    with_fragment_number: bool = True,
    **kwargs,
) -> bytes:
    """A Connect fragment as GetMedia returns it (fragment-number tags before the Cluster)."""
    extra = kwargs.pop("extra_tags_before_cluster", ())
    tags = ([("AWS_KINESISVIDEO_FRAGMENT_NUMBER", number(index))],) if with_fragment_number else ()
    return write_connect_fragment(
        contact_id=contact_id,
        instance_id="instance-1",
        timecode_ms=T0 + index * 1000,
        customer_pcm=pcm(2 * index) if customer is None else customer,
        agent_pcm=pcm(2 * index + 1) if agent is None else agent,
        extra_tags_before_cluster=(*tags, *extra),
        **kwargs,
    )


def run(stream: ConnectContactStream, data: bytes, chunks: list[int] | None = None) -> list[AudioFrame]:
    """Feed ``data`` cut at ``chunks`` sizes (whole if None) and close the input."""
    parser = MkvStreamParser()
    out: list[AudioFrame] = []
    offset = 0
    for size in chunks or [len(data)]:
        out += stream.feed(parser.feed(data[offset : offset + size]))
        offset += size
    out += stream.feed(parser.feed(data[offset:]))
    out += stream.feed(parser.close())
    out += stream.close()
    return out


def track_pcm(frames: list[AudioFrame], track: Track) -> bytes:
    return b"".join(frame.pcm for frame in frames if frame.track is track)


def test_emits_both_tracks_in_order_for_whole_bytewise_and_random_chunking():
    customer, agent = pcm(10, 1.0), pcm(11, 1.0)
    data = fragment(customer=customer, agent=agent)

    whole = run(ConnectContactStream(CONTACT), data)
    bytewise = run(ConnectContactStream(CONTACT), data, [1] * len(data))
    rng = random.Random(7)
    chunked = run(ConnectContactStream(CONTACT), data, [rng.randint(1, 300) for _ in range(len(data) // 150)])

    assert whole == bytewise == chunked
    assert track_pcm(whole, Track.CUSTOMER) == customer
    assert track_pcm(whole, Track.AGENT) == agent
    customer_frames = [f for f in whole if f.track is Track.CUSTOMER]
    assert [f.frame_index for f in customer_frames] == list(range(len(customer_frames)))
    assert [f.producer_timestamp_ms for f in customer_frames[:3]] == [T0, T0 + 64, T0 + 128]
    assert {f.fragment_number for f in whole} == {number(0)}
    assert {f.sample_rate for f in whole} == {8000}
    assert {f.contact_id for f in whole} == {CONTACT}


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=40))
def test_any_chunking_gives_the_same_frames(cuts):
    data = fragment(index=0) + fragment(index=1)
    expected = run(ConnectContactStream(CONTACT), data)
    assert run(ConnectContactStream(CONTACT), data, cuts) == expected


def test_tracks_are_routed_by_name_even_with_swapped_numbers():
    customer, agent = pcm(20), pcm(21)
    data = fragment(customer=customer, agent=agent, customer_track_number=2, agent_track_number=1)
    frames = run(ConnectContactStream(CONTACT), data)
    assert track_pcm(frames, Track.CUSTOMER) == customer
    assert track_pcm(frames, Track.AGENT) == agent


def test_legacy_customer_track_name_is_the_customer():
    customer = pcm(30)
    data = fragment(customer=customer, customer_track_name="Track_audio/L16")
    frames = run(ConnectContactStream(CONTACT), data)
    assert track_pcm(frames, Track.CUSTOMER) == customer


def test_unknown_track_is_ignored_and_counted():
    agent = pcm(41)
    data = fragment(customer=pcm(40), agent=agent, customer_track_name="AUDIO_FROM_SOMEONE")
    stream = ConnectContactStream(CONTACT)
    frames = run(stream, data)
    assert track_pcm(frames, Track.CUSTOMER) == b""
    assert track_pcm(frames, Track.AGENT) == agent
    assert stream.unknown_track_frames == {"AUDIO_FROM_SOMEONE": 8}  # 8000 bytes in 1 KiB blocks


def test_frames_are_held_until_the_fragments_contact_id_is_seen():
    data = fragment()
    cut = data.index(b"ContactId") - 16  # inside the Tags element, after the Cluster
    stream = ConnectContactStream(CONTACT)
    parser = MkvStreamParser()
    assert stream.feed(parser.feed(data[:cut])) == []
    released = stream.feed(parser.feed(data[cut:]))
    assert len(released) == 16
    assert stream.state is StreamState.READING


def test_sample_rate_comes_from_the_mime_type_tag():
    data = fragment(customer=pcm(50, sample_rate=16000), agent=pcm(51, sample_rate=16000), sample_rate=16000)
    frames = run(ConnectContactStream(CONTACT), data)
    assert {f.sample_rate for f in frames} == {16000}


def test_contact_change_ends_the_stream_and_leaks_nothing():
    own = [fragment(index=i) for i in range(2)]
    others = [fragment(OTHER_CONTACT, index=i) for i in (2, 3)]
    stream = ConnectContactStream(CONTACT, start_fragment_number=number(0))
    frames = run(stream, b"".join(own + others + [fragment(index=4)]))

    assert stream.ended and stream.end_reason == EndReason.CONTACT_CHANGED
    assert {f.fragment_number for f in frames} == {number(0), number(1)}
    assert track_pcm(frames, Track.CUSTOMER) == pcm(0) + pcm(2)
    assert track_pcm(frames, Track.AGENT) == pcm(1) + pcm(3)
    assert stream.last_fragment_number == number(1)


def test_leading_fragments_of_another_contact_are_skipped_without_a_start_number():
    data = fragment(OTHER_CONTACT, index=0, with_fragment_number=False) + fragment(
        index=1, with_fragment_number=False
    )
    stream = ConnectContactStream(CONTACT)
    frames = run(stream, data)
    assert track_pcm(frames, Track.CUSTOMER) == pcm(2)
    assert stream.skipped_fragments == 1
    assert not stream.ended


def test_fragments_before_the_start_fragment_are_skipped_even_of_the_same_contact():
    data = fragment(OTHER_CONTACT, index=0) + fragment(index=1) + fragment(index=2)
    stream = ConnectContactStream(CONTACT, start_fragment_number=number(2))
    frames = run(stream, data)
    assert {f.fragment_number for f in frames} == {number(2)}
    assert stream.skipped_fragments == 2


def test_another_contact_at_the_start_fragment_ends_the_stream():
    stream = ConnectContactStream(CONTACT, start_fragment_number=number(0))
    frames = run(stream, fragment(OTHER_CONTACT, index=0) + fragment(index=1))
    assert frames == []
    assert stream.end_reason == EndReason.CONTACT_CHANGED


def test_fragment_without_a_contact_id_is_discarded():
    data = write_fragment(
        tracks=[TrackSpec(1, "AUDIO_FROM_CUSTOMER"), TrackSpec(2, "AUDIO_TO_CUSTOMER")],
        cluster_timecode=T0,
        blocks=[BlockSpec(1, 0, pcm(60, 0.064)), BlockSpec(2, 0, pcm(61, 0.064))],
    )
    stream = ConnectContactStream(CONTACT)
    assert run(stream, data) == []
    assert stream.discarded_fragments == 1


def test_error_tags_end_the_stream_with_the_error():
    error = write_fragment(
        tracks=(),
        cluster_timecode=0,
        blocks=(),
        tags_before_cluster=[
            [("AWS_KINESISVIDEO_ERROR_CODE", "FRAGMENT_NOT_FOUND"), ("AWS_KINESISVIDEO_ERROR_ID", "4000")]
        ],
    )
    stream = ConnectContactStream(CONTACT)
    frames = run(stream, fragment(index=0) + error + fragment(index=1))
    assert stream.end_reason == EndReason.KVS_ERROR
    assert stream.error is not None
    assert (stream.error.error_id, stream.error.code) == ("4000", "FRAGMENT_NOT_FOUND")
    assert {f.fragment_number for f in frames} == {number(0)}


def test_continuation_token_and_fragment_number_are_recorded():
    customer = pcm(70, 0.128)
    data = write_fragment(
        tracks=[TrackSpec(1, "AUDIO_FROM_CUSTOMER"), TrackSpec(2, "AUDIO_TO_CUSTOMER")],
        cluster_timecode=T0,
        blocks=[BlockSpec(1, 0, customer[:1024]), BlockSpec(1, 64, customer[1024:])],
        tags_before_cluster=[[("AWS_KINESISVIDEO_FRAGMENT_NUMBER", number(5))]],
        tags_after_cluster=[
            [("ContactId", CONTACT)],
            [("MimeType", "audio/L16;rate=8000;channels=1;")],
            [("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", "10"), ("AWS_KINESISVIDEO_CONTINUATION_TOKEN", number(5))],
        ],
    )
    stream = ConnectContactStream(CONTACT)
    frames = run(stream, data)
    assert track_pcm(frames, Track.CUSTOMER) == customer
    assert stream.continuation_token == number(5)
    assert stream.last_fragment_number == number(5)


def test_odd_length_pcm_is_a_corrupt_stream():
    data = write_fragment(
        tracks=[TrackSpec(1, "AUDIO_FROM_CUSTOMER")],
        cluster_timecode=T0,
        blocks=[BlockSpec(1, 0, b"\x01\x02\x03")],
        tags_after_cluster=[[("ContactId", CONTACT)]],
    )
    stream = ConnectContactStream(CONTACT)
    assert run(stream, data) == []
    assert stream.end_reason == EndReason.CORRUPT_STREAM


def test_end_record_carries_the_totals():
    stream = ConnectContactStream(CONTACT, start_fragment_number=number(0))
    frames = run(stream, fragment(index=0) + fragment(index=1, agent=pcm(99, 0.25)))
    end = stream.end("stream_ended")

    assert isinstance(end, AudioEnd)
    assert end.customer_samples == 2 * 4000 and end.agent_samples == 4000 + 2000
    assert end.customer_frames == len([f for f in frames if f.track is Track.CUSTOMER]) == 8 + 8
    assert end.agent_frames == len([f for f in frames if f.track is Track.AGENT]) == 8 + 4
    assert end.last_fragment_number == number(1)
    assert end.producer_timestamp_ms == T0 + 1000 + 500
    assert decode_audio_record(end.encode()) == end
    assert stream.ended
