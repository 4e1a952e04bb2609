"""write_connect_fragment: Amazon Connect's track and tag layout, read back by the parser."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mkv import (
    ClusterStart,
    EbmlHeader,
    Frame,
    MkvEvent,
    MkvStreamParser,
    SegmentInfo,
    Tag,
    TrackEntry,
    write_connect_fragment,
)

CONTACT_ID = "d111f871-5fe7-40b1-b5f7-6b67060de0c2"
INSTANCE_ID = "d5b716a2-0000-4000-8000-000000000000"
TIMECODE_MS = 1_726_677_688_724


def parse_in_chunks(data: bytes, cuts: Iterable[int] = ()) -> list[MkvEvent]:
    bounds = [0, *sorted(cuts), len(data)]
    parser = MkvStreamParser()
    events: list[MkvEvent] = []
    for start, end in zip(bounds, bounds[1:]):
        events += parser.feed(data[start:end])
    return events + parser.close()


def connect_fragment(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = dict(
        contact_id=CONTACT_ID,
        instance_id=INSTANCE_ID,
        timecode_ms=TIMECODE_MS,
        customer_pcm=b"",
        agent_pcm=b"",
    )
    arguments.update(overrides)
    return write_connect_fragment(**arguments)


def frames(events: Iterable[MkvEvent]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def test_layout_of_a_connect_fragment() -> None:
    customer_pcm = bytes(range(256)) * 4  # 512 samples: one block, 64 ms at 8 kHz
    agent_pcm = bytes(reversed(range(256))) * 4
    events = parse_in_chunks(connect_fragment(customer_pcm=customer_pcm, agent_pcm=agent_pcm))
    assert events == [
        EbmlHeader("matroska"),
        SegmentInfo(1_000_000, "Kinesis Video SDK"),
        TrackEntry(1, "AUDIO_FROM_CUSTOMER", "A_AAC"),
        TrackEntry(2, "AUDIO_TO_CUSTOMER", "A_AAC"),
        ClusterStart(TIMECODE_MS),
        Frame(1, TIMECODE_MS, customer_pcm, True),
        Frame(2, TIMECODE_MS, agent_pcm, True),
        Tag("ContactId", CONTACT_ID),
        Tag("InstanceId", INSTANCE_ID),
        Tag("MimeType", "audio/L16;rate=8000;channels=1;"),
        Tag("AUDIO_FROM_CUSTOMER", "1"),
        Tag("AUDIO_TO_CUSTOMER", "2"),
        Tag("Events", "[]"),
    ]


def test_tracks_are_cut_into_blocks_and_interleaved_by_timecode() -> None:
    customer_pcm = b"\x01\x00" * 1500  # 3000 bytes: 1024 + 1024 + 952
    agent_pcm = b"\x02\x00" * 1024  # 2048 bytes: 1024 + 1024
    fragment = connect_fragment(customer_pcm=customer_pcm, agent_pcm=agent_pcm)
    blocks = frames(parse_in_chunks(fragment))
    # 512 samples per 1 KiB block at 8 kHz: 64 ms apart; the customer first on a tie.
    assert [(f.track_number, f.timecode - TIMECODE_MS, len(f.payload)) for f in blocks] == [
        (1, 0, 1024),
        (2, 0, 1024),
        (1, 64, 1024),
        (2, 64, 1024),
        (1, 128, 952),
    ]


def test_odd_block_bytes_keep_whole_samples() -> None:
    pcm = bytes(range(200))
    fragment = connect_fragment(customer_pcm=pcm, block_bytes=33, sample_rate=16_000)
    blocks = frames(parse_in_chunks(fragment))
    assert [len(f.payload) for f in blocks] == [32] * 6 + [8]
    # 16 samples per block at 16 kHz: 1 ms apart.
    assert [f.timecode - TIMECODE_MS for f in blocks] == [0, 1, 2, 3, 4, 5, 6]
    assert b"".join(f.payload for f in blocks) == pcm


def test_legacy_customer_track_name_and_other_track_numbers() -> None:
    events = parse_in_chunks(
        connect_fragment(
            customer_pcm=b"\x00\x01",
            agent_pcm=b"\x00\x02",
            customer_track_number=3,
            agent_track_number=200,
            customer_track_name="Track_audio/L16",
            events_tag='[{"type":"hold"}]',
        )
    )
    assert [e for e in events if isinstance(e, TrackEntry)] == [
        TrackEntry(3, "Track_audio/L16", "A_AAC"),
        TrackEntry(200, "AUDIO_TO_CUSTOMER", "A_AAC"),
    ]
    assert [(f.track_number, f.payload) for f in frames(events)] == [
        (3, b"\x00\x01"),
        (200, b"\x00\x02"),
    ]
    tags = {e.name: e.value for e in events if isinstance(e, Tag)}
    assert (tags["AUDIO_FROM_CUSTOMER"], tags["AUDIO_TO_CUSTOMER"]) == ("3", "200")
    assert tags["Events"] == '[{"type":"hold"}]'


def test_extra_tags_come_between_tracks_and_cluster() -> None:
    kvs_tags = [
        ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", "9134"),
        ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "1.5"),
    ]
    events = parse_in_chunks(
        connect_fragment(customer_pcm=b"\x00\x00", extra_tags_before_cluster=[kvs_tags])
    )
    assert [type(e).__name__ for e in events[:7]] == [
        "EbmlHeader",
        "SegmentInfo",
        "TrackEntry",
        "TrackEntry",
        "Tag",
        "Tag",
        "ClusterStart",
    ]
    assert events[4:6] == [Tag(name, value) for name, value in kvs_tags]


def test_empty_tracks() -> None:
    events = parse_in_chunks(connect_fragment(unknown_size_cluster=True))
    assert ClusterStart(TIMECODE_MS) in events
    assert frames(events) == []
    assert [e.name for e in events if isinstance(e, Tag)] == [
        "ContactId",
        "InstanceId",
        "MimeType",
        "AUDIO_FROM_CUSTOMER",
        "AUDIO_TO_CUSTOMER",
        "Events",
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"customer_pcm": b"\x00\x00\x00"}, "not a whole number of samples"),
        ({"agent_pcm": b"\x00"}, "not a whole number of samples"),
        ({"block_bytes": 1}, "at least one sample"),
        ({"sample_rate": 0}, "must be positive"),
        ({"agent_track_number": 1}, "both tracks have number 1"),
        # 32.768 s of audio: the last block's relative timecode no longer fits 16 bits.
        ({"customer_pcm": bytes(2 * 8000 * 33)}, "signed 16-bit"),
    ],
)
def test_invalid_arguments(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect_fragment(**overrides)


pcm16 = st.integers(0, 3000).flatmap(
    lambda samples: st.binary(min_size=2 * samples, max_size=2 * samples)
)


@st.composite
def connect_arguments(draw: st.DrawFn) -> dict[str, Any]:
    track_numbers = st.lists(st.integers(1, 300), min_size=2, max_size=2, unique=True)
    customer_track, agent_track = draw(track_numbers)
    return dict(
        contact_id=draw(st.uuids()).hex,
        instance_id=draw(st.uuids()).hex,
        timecode_ms=draw(st.integers(0, 2**45)),
        customer_pcm=draw(pcm16),
        agent_pcm=draw(pcm16),
        sample_rate=draw(st.sampled_from([8000, 16000, 44100, 48000])),
        block_bytes=draw(st.integers(2, 2048)),
        customer_track_number=customer_track,
        agent_track_number=agent_track,
        unknown_size_cluster=draw(st.booleans()),
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(connect_arguments(), min_size=1, max_size=3), st.data())
def test_round_trip_any_fragments_any_chunking(
    fragments: list[dict[str, Any]], data: st.DataObject
) -> None:
    stream = b"".join(write_connect_fragment(**arguments) for arguments in fragments)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    events = parse_in_chunks(stream, cuts)

    per_fragment: list[list[MkvEvent]] = []
    for event in events:
        if isinstance(event, EbmlHeader):
            per_fragment.append([])
        per_fragment[-1].append(event)
    assert len(per_fragment) == len(fragments)

    for arguments, fragment_events in zip(fragments, per_fragment):
        customer, agent = arguments["customer_track_number"], arguments["agent_track_number"]
        timecode_ms, rate = arguments["timecode_ms"], arguments["sample_rate"]
        block_limit = arguments["block_bytes"]
        fragment_frames = frames(fragment_events)
        assert [f.timecode for f in fragment_frames] == sorted(f.timecode for f in fragment_frames)
        for track, pcm in ((customer, arguments["customer_pcm"]), (agent, arguments["agent_pcm"])):
            track_frames = [f for f in fragment_frames if f.track_number == track]
            assert b"".join(f.payload for f in track_frames) == pcm
            offset = 0
            for frame in track_frames:
                assert 0 < len(frame.payload) <= block_limit and len(frame.payload) % 2 == 0
                assert frame.timecode == timecode_ms + (offset // 2) * 1000 // rate
                offset += len(frame.payload)
        assert {f.track_number for f in fragment_frames} <= {customer, agent}
        assert [e for e in fragment_events if isinstance(e, Tag)] == [
            Tag("ContactId", arguments["contact_id"]),
            Tag("InstanceId", arguments["instance_id"]),
            Tag("MimeType", f"audio/L16;rate={rate};channels=1;"),
            Tag("AUDIO_FROM_CUSTOMER", str(customer)),
            Tag("AUDIO_TO_CUSTOMER", str(agent)),
            Tag("Events", "[]"),
        ]
        assert ClusterStart(timecode_ms) in fragment_events
