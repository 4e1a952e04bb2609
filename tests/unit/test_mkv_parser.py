"""MkvStreamParser against real KVS captures and hand-built streams.

Streams here are built with a small local encoder (and element IDs written out here)
rather than the project's writer, so a bug shared by writer and parser cannot hide
itself. Every input that should parse is fed three ways (h11's ``tr()`` habit): whole,
one byte at a time, and followed by trailing bytes; the events must be identical.
"""

from __future__ import annotations

import re
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mkv import (
    ClusterStart,
    EbmlHeader,
    Frame,
    MkvError,
    MkvEvent,
    MkvStreamParser,
    SegmentInfo,
    Tag,
    TrackEntry,
)
from pipeline.mkv import parser as parser_module

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kvs"

EBML, EBML_VERSION, DOC_TYPE = 0x1A45DFA3, 0x4286, 0x4282
SEGMENT, INFO, TIMECODE_SCALE, TITLE = 0x18538067, 0x1549A966, 0x2AD7B1, 0x7BA9
TRACKS, TRACK_ENTRY, TRACK_NUMBER = 0x1654AE6B, 0xAE, 0xD7
NAME, CODEC_ID, CODEC_PRIVATE = 0x536E, 0x86, 0x63A2
CLUSTER, TIMECODE, SIMPLE_BLOCK = 0x1F43B675, 0xE7, 0xA3
BLOCK_GROUP, BLOCK, REFERENCE_BLOCK, BLOCK_DURATION = 0xA0, 0xA1, 0xFB, 0x9B
TAGS, TAG, TARGETS, SIMPLE_TAG = 0x1254C367, 0x7373, 0x63C0, 0x67C8
TAG_NAME, TAG_STRING, TAG_BINARY = 0x45A3, 0x4487, 0x4485
VOID, CRC32, CUES, SEGMENT_UID = 0xEC, 0xBF, 0x1C53BB6B, 0x73A4
UNKNOWN_ID = 0x4FFF  # not a Matroska element

# The first bytes of another fragment's EBML header (ID + start of an 8-byte size).
TRAILING_BYTES = bytes.fromhex("1a45dfa3010000")


# --- A minimal EBML encoder, independent of pipeline.mkv.writer -----------------------


def element(element_id: int, *body: bytes, size_length: int = 1) -> bytes:
    payload = b"".join(body)
    marker = 1 << (7 * size_length)
    assert len(payload) < marker - 1, "size does not fit; pass a larger size_length"
    size = (marker | len(payload)).to_bytes(size_length, "big")
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size + payload


def unknown_size(element_id: int) -> bytes:
    return element_id.to_bytes(4, "big") + b"\xff"


def ebml_header(doc_type: bytes = b"matroska") -> bytes:
    return element(EBML, element(EBML_VERSION, b"\x01"), element(DOC_TYPE, doc_type))


def segment(*children: bytes) -> bytes:
    return unknown_size(SEGMENT) + b"".join(children)


def info(title: bytes = b"t") -> bytes:
    scale = element(TIMECODE_SCALE, (1_000_000).to_bytes(3, "big"))
    return element(INFO, scale, element(TITLE, title))


def track_entry(number: int, name: bytes, codec: bytes) -> bytes:
    return element(
        TRACK_ENTRY,
        element(TRACK_NUMBER, bytes([number])),
        element(NAME, name),
        element(CODEC_ID, codec),
    )


def simple_tag(*children: bytes) -> bytes:
    return element(SIMPLE_TAG, *children)


def tags(*pairs: tuple[bytes, bytes]) -> bytes:
    simple_tags = (simple_tag(element(TAG_NAME, n), element(TAG_STRING, v)) for n, v in pairs)
    return element(TAGS, element(TAG, *simple_tags))


def timecode(value: int) -> bytes:
    return element(TIMECODE, value.to_bytes(8, "big"))


def block_body(track: int, relative: int, flags: int, payload: bytes) -> bytes:
    track_vint = bytes([0x80 | track]) if track < 127 else (0x4000 | track).to_bytes(2, "big")
    return track_vint + relative.to_bytes(2, "big", signed=True) + bytes([flags]) + payload


def simple_block(track: int, relative: int, payload: bytes, flags: int = 0x80) -> bytes:
    return element(SIMPLE_BLOCK, block_body(track, relative, flags, payload), size_length=2)


def cluster(tc: int, *children: bytes, known_size: bool = True) -> bytes:
    if known_size:
        return element(CLUSTER, timecode(tc), *children, size_length=4)
    return unknown_size(CLUSTER) + timecode(tc) + b"".join(children)


def simple_fragment(tc: int = 1000, *, known_size_cluster: bool = True) -> bytes:
    blocks = simple_block(1, 0, b"abc"), simple_block(1, 5, b"de")
    return ebml_header() + segment(
        info(),
        element(TRACKS, track_entry(1, b"AUDIO_FROM_CUSTOMER", b"A_AAC")),
        cluster(tc, *blocks, known_size=known_size_cluster),
        tags((b"ContactId", b"c-1")),
    )


SIMPLE_FRAGMENT_EVENTS = [
    EbmlHeader("matroska"),
    SegmentInfo(1_000_000, "t"),
    TrackEntry(1, "AUDIO_FROM_CUSTOMER", "A_AAC"),
    ClusterStart(1000),
    Frame(1, 1000, b"abc", True),
    Frame(1, 1005, b"de", True),
    Tag("ContactId", "c-1"),
]


# --- Feeding helpers ------------------------------------------------------------------


def parse_chunks(chunks: Iterable[bytes], **parser_options: int) -> list[MkvEvent]:
    parser = MkvStreamParser(**parser_options)
    events: list[MkvEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


def parse_three_ways(data: bytes) -> list[MkvEvent]:
    """Whole, one byte at a time, and with trailing bytes: identical events each time."""
    whole = parse_chunks([data])
    assert parse_chunks(data[i : i + 1] for i in range(len(data))) == whole
    parser = MkvStreamParser()
    # Every event is delivered by the feed() that completes it, never held back for
    # bytes that belong to whatever follows.
    assert parser.feed(data + TRAILING_BYTES) == whole
    with pytest.raises(MkvError, match="ends inside"):
        parser.close()
    return whole


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def split_fragments(events: list[MkvEvent]) -> list[list[MkvEvent]]:
    fragments: list[list[MkvEvent]] = []
    for event in events:
        if isinstance(event, EbmlHeader):
            fragments.append([])
        fragments[-1].append(event)
    return fragments


def tag_values(events: Iterable[MkvEvent], name: str) -> list[str]:
    return [e.value for e in events if isinstance(e, Tag) and e.name == name]


def kinds(events: Iterable[MkvEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def frames(events: Iterable[MkvEvent]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


# --- Real KVS GetMedia captures -------------------------------------------------------


def test_getmedia_capture_has_the_independently_counted_elements() -> None:
    counts = Counter(kinds(parse_three_ways(fixture("getmedia_h264_5fragments.mkv"))))
    assert counts["EbmlHeader"] == 5
    assert counts["ClusterStart"] == 5
    assert counts["Frame"] == 300
    assert counts["Tag"] == 60


def test_getmedia_capture_fragment_tags_and_tracks() -> None:
    fragments = split_fragments(parse_chunks([fixture("getmedia_h264_5fragments.mkv")]))
    numbers = [tag_values(f, "AWS_KINESISVIDEO_FRAGMENT_NUMBER")[0] for f in fragments]
    assert all(number.isdigit() and len(number) == 47 for number in numbers)
    assert [int(n) for n in numbers] == sorted(int(n) for n in numbers)
    assert len(set(numbers)) == 5
    for fragment, number in zip(fragments, numbers):
        assert tag_values(fragment, "AWS_KINESISVIDEO_CONTINUATION_TOKEN") == [number]
        assert float(tag_values(fragment, "AWS_KINESISVIDEO_SERVER_TIMESTAMP")[0]) > 1.5e9
        # Zero padding of EBML strings is not part of the value.
        assert tag_values(fragment, "DURATION") == ["00:00:10.000000000"]
        header_types = (EbmlHeader, SegmentInfo, TrackEntry)
        assert [e for e in fragment if isinstance(e, header_types)] == [
            EbmlHeader("matroska"),
            SegmentInfo(1_000_000, ""),
            TrackEntry(1, "", "V_MPEG4/ISO/AVC"),
        ]


def test_getmedia_capture_frames_are_whole_h264_access_units() -> None:
    fragments = split_fragments(parse_chunks([fixture("getmedia_h264_5fragments.mkv")]))
    cluster_timecodes = [e.timecode for f in fragments for e in f if isinstance(e, ClusterStart)]
    assert cluster_timecodes == [0, 2000, 4000, 6000, 8000]
    for fragment, cluster_timecode in zip(fragments, cluster_timecodes):
        fragment_frames = frames(fragment)
        assert len(fragment_frames) == 60
        assert fragment_frames[0].keyframe
        assert fragment_frames[0].timecode == cluster_timecode
        timecodes = [f.timecode for f in fragment_frames]
        assert timecodes == sorted(timecodes)
        for frame in fragment_frames:
            assert frame.track_number == 1
            # AVC payloads are 4-byte-length-prefixed NAL units that must tile the frame
            # exactly; a payload cut at the wrong place would not.
            nal_types, position = [], 0
            while position < len(frame.payload):
                length = int.from_bytes(frame.payload[position : position + 4], "big")
                nal_types.append(frame.payload[position + 4] & 0x1F)
                position += 4 + length
            assert position == len(frame.payload)
            idr_slice = 5
            assert (idr_slice in nal_types) == frame.keyframe


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_getmedia_capture_any_chunking(data: st.DataObject) -> None:
    raw = fixture("getmedia_h264_5fragments.mkv")
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=200))
    botocore_chunks = [raw[i : i + 1024] for i in range(0, len(raw), 1024)]
    assert parse_chunks(split_at(raw, cuts)) == parse_chunks(botocore_chunks)


def test_mixed_tags_capture_with_unknown_size_clusters() -> None:
    events = parse_three_ways(fixture("mixed_tags_unknown_size_clusters.mkv"))
    counts = Counter(kinds(events))
    assert counts["EbmlHeader"] == 10
    assert counts["ClusterStart"] == 10
    assert counts["Frame"] == 100
    assert counts["Tag"] == 105
    fragments = split_fragments(events)
    assert kinds(fragments[0]) == [
        "EbmlHeader",
        *["Tag"] * 5,  # before Info
        "SegmentInfo",
        "TrackEntry",
        *["Tag"] * 3,  # between Tracks and Cluster
        "ClusterStart",
        *["Frame"] * 10,
        *["Tag"] * 7,  # after the unknown-size Cluster, which the first Tags ended
    ]
    for fragment in fragments[1:]:
        assert kinds(fragment) == [
            "EbmlHeader",
            "SegmentInfo",
            "TrackEntry",
            *["Tag"] * 3,
            "ClusterStart",
            *["Frame"] * 10,
            *["Tag"] * 7,
        ]
    assert fragments[0][7] == TrackEntry(1, "test track", "V_MS/VFW/FOURCC")
    test_tags = [Tag(f"testTag_{i}", f"testTag_{i}_Value") for i in range(5)]
    assert fragments[0][1:6] == test_tags
    for fragment in fragments:
        assert fragment[-7:-2] == test_tags
        assert [tag.name for tag in fragment[-2:]] == [  # type: ignore[union-attr]
            "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW",
            "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
        ]
    cluster_timecodes = [e.timecode for e in events if isinstance(e, ClusterStart)]
    assert cluster_timecodes == list(range(0, 50_000, 5000))


def test_tags_without_cluster_capture() -> None:
    assert parse_three_ways(fixture("tags_empty_cluster.mkv")) == [
        EbmlHeader("matroska"),
        *(Tag(f"testTag_{i}", f"testTag_{i}_Value") for i in range(5)),
    ]


def test_empty_mkv_with_tags_capture() -> None:
    assert parse_three_ways(fixture("empty_mkv_with_tags.mkv")) == [
        EbmlHeader("matroska"),
        SegmentInfo(1_000_000, ""),
        TrackEntry(1, "", "V_MPEG4/ISO/AVC"),
        Tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER", "91343852338378294813695855977007281634605393997"),
        Tag("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "1516124526.822"),
        Tag("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", "1515865326.543"),
    ]


# --- Stream structure -----------------------------------------------------------------


def test_simple_fragment() -> None:
    assert parse_three_ways(simple_fragment()) == SIMPLE_FRAGMENT_EVENTS


def test_many_fragments_in_one_stream() -> None:
    stream = (
        simple_fragment(1000)
        + simple_fragment(2000, known_size_cluster=False)
        + simple_fragment(3000)
    )
    events = parse_three_ways(stream)
    assert [e for e in events if isinstance(e, (EbmlHeader, ClusterStart))] == [
        EbmlHeader("matroska"),
        ClusterStart(1000),
        EbmlHeader("matroska"),
        ClusterStart(2000),
        EbmlHeader("matroska"),
        ClusterStart(3000),
    ]
    assert [f.timecode for f in frames(events)] == [1000, 1005, 2000, 2005, 3000, 3005]


@pytest.mark.parametrize(
    "follower, follower_events",
    [
        (
            cluster(9000, simple_block(1, 1, b"x")),
            [ClusterStart(9000), Frame(1, 9001, b"x", True)],
        ),
        (tags((b"k", b"v")), [Tag("k", "v")]),
        (element(CUES, b"\x00" * 5), []),
        (info(title=b"again"), [SegmentInfo(1_000_000, "again")]),
        (ebml_header(), [EbmlHeader("matroska")]),
    ],
    ids=["Cluster", "Tags", "Cues", "Info", "EBML header"],
)
def test_unknown_size_cluster_ends_at_a_segment_level_element(
    follower: bytes, follower_events: list[MkvEvent]
) -> None:
    open_cluster = cluster(10, simple_block(1, 0, b"a"), known_size=False)
    parser = MkvStreamParser()
    events = parser.feed(ebml_header() + segment(open_cluster) + follower)
    assert events == [
        EbmlHeader("matroska"),
        ClusterStart(10),
        Frame(1, 10, b"a", True),
        *follower_events,
    ]
    if follower_events[:1] == [EbmlHeader("matroska")]:
        # A new EBML header ended the Segment too: a block now has no Cluster to be in.
        with pytest.raises(MkvError, match="unexpected SimpleBlock"):
            parser.feed(simple_block(1, 0, b"b"))
    else:
        # Still inside the Segment: a Cluster after the follower is parsed normally.
        assert parser.feed(cluster(20, simple_block(1, 0, b"b"))) == [
            ClusterStart(20),
            Frame(1, 20, b"b", True),
        ]


def test_unknown_elements_inside_an_unknown_size_cluster_are_skipped_not_ending_it() -> None:
    open_cluster = cluster(
        10, element(UNKNOWN_ID, b"??"), simple_block(1, 0, b"a"), known_size=False
    )
    assert parse_three_ways(ebml_header() + segment(open_cluster))[-1] == Frame(1, 10, b"a", True)


@pytest.mark.parametrize("size_length", range(1, 9))
def test_size_fields_of_every_length(size_length: int) -> None:
    def el(element_id: int, *body: bytes) -> bytes:
        return element(element_id, *body, size_length=size_length)

    entry = el(TRACK_ENTRY, el(TRACK_NUMBER, b"\x02"), el(NAME, b"n"), el(CODEC_ID, b"A_AAC"))
    stream = el(EBML, el(DOC_TYPE, b"matroska")) + segment(
        el(TRACKS, entry),
        el(CLUSTER, el(TIMECODE, b"\x07"), el(SIMPLE_BLOCK, block_body(2, -3, 0x00, b"pcm"))),
        el(TAGS, el(TAG, el(SIMPLE_TAG, el(TAG_NAME, b"k"), el(TAG_STRING, b"v")))),
    )
    assert parse_three_ways(stream) == [
        EbmlHeader("matroska"),
        TrackEntry(2, "n", "A_AAC"),
        ClusterStart(7),
        Frame(2, 4, b"pcm", False),
        Tag("k", "v"),
    ]


def test_void_crc_and_unknown_elements_are_skipped_everywhere() -> None:
    big_void = element(VOID, b"\x00" * 300, size_length=2)
    void, crc = element(VOID, b"\x00" * 3), element(CRC32, b"1234")
    unknown = element(UNKNOWN_ID, b"x")
    entry = element(
        TRACK_ENTRY,
        unknown,
        element(TRACK_NUMBER, b"\x01"),
        element(CODEC_PRIVATE, b"\x11" * 40),
        void,
    )
    tag = element(TAG, element(TARGETS, b""), simple_tag(void, element(TAG_NAME, b"k")))
    stream = (
        big_void
        + crc
        + element(EBML, crc, element(DOC_TYPE, b"matroska"), void)
        + void
        + segment(
            big_void,
            unknown,
            element(INFO, crc, element(TITLE, b"t"), unknown),
            element(TRACKS, entry),
            cluster(5, crc, void, simple_block(1, 0, b"a"), unknown),
            element(TAGS, crc, tag),
        )
    )
    assert parse_three_ways(stream) == [
        EbmlHeader("matroska"),
        SegmentInfo(1_000_000, "t"),
        TrackEntry(1, "", ""),
        ClusterStart(5),
        Frame(1, 5, b"a", True),
        Tag("k", ""),
    ]


def test_large_skipped_element_is_not_buffered() -> None:
    size = 8 * 1024 * 1024
    void_header = b"\xec" + (size | 1 << 56).to_bytes(8, "big")
    chunk = bytes(64 * 1024)
    parser = MkvStreamParser()
    parser.feed(ebml_header() + segment() + void_header)
    tracemalloc.start()
    try:
        for _ in range(size // len(chunk)):
            parser.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    assert parser.feed(tags((b"k", b"v"))) == [Tag("k", "v")]


def test_elements_ending_exactly_where_their_parents_end() -> None:
    # Known-size Segment whose last Cluster, SimpleBlock, Tags, Tag and SimpleTag all end
    # on the same byte; and zero-size masters, which end where they start.
    known_size_segment = element(
        SEGMENT,
        element(TAGS, b""),
        element(CLUSTER, b"", size_length=2),
        cluster(1, simple_block(1, 0, b"a")),
        tags((b"k", b"v")),
        size_length=8,
    )
    stream = ebml_header() + known_size_segment + ebml_header() + known_size_segment
    fragment_events = [
        EbmlHeader("matroska"),
        ClusterStart(1),
        Frame(1, 1, b"a", True),
        Tag("k", "v"),
    ]
    assert parse_three_ways(stream) == 2 * fragment_events


def test_unknown_size_cluster_ends_with_its_known_size_segment() -> None:
    open_cluster = cluster(3, simple_block(1, 0, b"a"), known_size=False)
    known_size_segment = element(SEGMENT, open_cluster, size_length=4)
    stream = ebml_header() + known_size_segment + simple_fragment()
    assert parse_three_ways(stream) == [
        EbmlHeader("matroska"),
        ClusterStart(3),
        Frame(1, 3, b"a", True),
        *SIMPLE_FRAGMENT_EVENTS,
    ]


def test_block_group_keyframe_comes_from_reference_block() -> None:
    key = element(
        BLOCK_GROUP,
        element(BLOCK, block_body(1, -2, 0x00, b"key")),
        element(BLOCK_DURATION, b"\x20"),
    )
    delta = element(
        BLOCK_GROUP,
        element(BLOCK, block_body(1, 40, 0x00, b"delta")),
        element(REFERENCE_BLOCK, b"\xff\xd8"),
    )
    stream = ebml_header() + segment(cluster(100, key, delta))
    assert frames(parse_three_ways(stream)) == [
        Frame(1, 98, b"key", True),
        Frame(1, 140, b"delta", False),
    ]


def test_track_number_of_two_bytes_and_negative_relative_timecode() -> None:
    stream = ebml_header() + segment(cluster(50_000, simple_block(300, -32768, b"a", flags=0)))
    assert parse_three_ways(stream)[-1] == Frame(300, 50_000 - 32768, b"a", False)


def test_tag_binary_is_hex_and_string_padding_is_dropped() -> None:
    binary_only = simple_tag(element(TAG_NAME, b"Blob\x00"), element(TAG_BINARY, b"\x00\xab\xff"))
    both = simple_tag(
        element(TAG_NAME, b"Both"), element(TAG_BINARY, b"\x01"), element(TAG_STRING, b"s")
    )
    stream = ebml_header(b"matroska\x00\x00") + segment(
        element(TAGS, element(TAG, binary_only)), element(TAGS, element(TAG, both))
    )
    assert parse_three_ways(stream) == [
        EbmlHeader("matroska"),
        Tag("Blob", "00abff"),
        Tag("Both", "s"),
    ]


def test_nested_simple_tags_each_give_a_tag() -> None:
    inner = simple_tag(element(TAG_NAME, b"inner"), element(TAG_STRING, b"1"))
    outer = simple_tag(element(TAG_NAME, b"outer"), element(TAG_STRING, b"2"), inner)
    stream = ebml_header() + segment(element(TAGS, element(TAG, outer)))
    assert parse_three_ways(stream)[1:] == [Tag("inner", "1"), Tag("outer", "2")]


# --- Masters repeated from fragment to fragment --------------------------------------
# KVS repeats the EBML header, Info, Tracks and Tags in every fragment, some with values
# that change (fragment numbers, timestamps). The parser looks such masters up rather
# than parsing them again, and may hold one back until it is whole; these tests hold it
# to the events, and the feed they come in, of a parse that does neither.


def repeated_fragment(
    number: int, *, tag_name: bytes = b"FragmentNumber", unused: bytes = b"unused"
) -> bytes:
    """A fragment whose Info and first Tags change with ``number`` but keep their sizes:
    a skipped SegmentUID, a tag value, a SimpleTag with two TagStrings (the last
    counts) and nested SimpleTags."""
    digits = b"%08d" % number
    fragment_tags = element(
        TAGS,
        element(
            TAG,
            simple_tag(element(TAG_NAME, tag_name), element(TAG_STRING, digits)),
            simple_tag(
                element(TAG_NAME, b"Twice"),
                element(TAG_STRING, unused),
                element(TAG_STRING, digits),
            ),
            simple_tag(
                element(TAG_NAME, b"Outer"),
                element(TAG_STRING, digits[::-1]),
                simple_tag(element(TAG_NAME, b"Inner"), element(TAG_STRING, digits)),
            ),
        ),
    )
    scale = element(TIMECODE_SCALE, (1_000_000).to_bytes(3, "big"))
    return ebml_header() + segment(
        element(INFO, scale, element(TITLE, b"t"), element(SEGMENT_UID, digits)),
        element(
            TRACKS,
            track_entry(1, b"AUDIO_FROM_CUSTOMER", b"A_AAC"),
            track_entry(2, b"AUDIO_TO_CUSTOMER", b"A_AAC"),
        ),
        fragment_tags,
        cluster(number, simple_block(1, 0, digits), simple_block(2, 0, digits)),
        tags((b"ContactId", b"c-1")),
        tags((b"Events", digits)),
    )


def parse_without_memo(chunks: Iterable[bytes]) -> list[MkvEvent]:
    with patch.object(parser_module, "_MEMOIZED_MASTERS", frozenset()):
        return parse_chunks(chunks)


def test_repeated_masters_give_the_events_of_a_parse_without_memo() -> None:
    stream = b"".join(
        [
            *(repeated_fragment(number) for number in (1, 2, 3)),
            # The same sizes, another name: not the template's bytes.
            repeated_fragment(4, tag_name=b"FragmentNumbeR"),
            repeated_fragment(5),
        ]
    )
    events = parse_three_ways(stream)
    assert events == parse_without_memo([stream])
    assert tag_values(events, "FragmentNumber") == ["00000001", "00000002", "00000003", "00000005"]
    assert tag_values(events, "FragmentNumbeR") == ["00000004"]
    assert tag_values(events, "Twice") == [f"{n:08d}" for n in range(1, 6)]
    assert tag_values(events, "Outer") == [f"{n:08d}"[::-1] for n in range(1, 6)]
    assert tag_values(events, "Inner") == [f"{n:08d}" for n in range(1, 6)]
    assert [e for e in events if isinstance(e, SegmentInfo)] == 5 * [SegmentInfo(1_000_000, "t")]


@pytest.mark.parametrize(
    "second",
    [
        repeated_fragment(2),
        # The first Tags has the same size, but its first Tag ends 6 bytes earlier.
        repeated_fragment(2, tag_name=b"Fragment", unused=b"unused......"),
    ],
    ids=["same layout", "other layout"],
)
def test_a_repeated_master_cut_by_a_chunk_delays_no_event(second: bytes) -> None:
    first = repeated_fragment(1)
    assert len(second) == len(first)
    # The events each byte of ``second`` completes, without memo.
    with patch.object(parser_module, "_MEMOIZED_MASTERS", frozenset()):
        reference = MkvStreamParser()
        completed_by = [reference.feed(second[i : i + 1]) for i in range(len(second))]
    for cut in range(len(second) + 1):
        parser = MkvStreamParser()
        parser.feed(first)
        assert parser.feed(second[:cut]) == [e for events in completed_by[:cut] for e in events]
        assert parser.feed(second[cut:]) == [e for events in completed_by[cut:] for e in events]


def test_input_ending_in_a_held_master_names_what_it_ends_in() -> None:
    first, second = repeated_fragment(1), repeated_fragment(2)
    for cut in range(len(second)):
        truncated = [first, second[:cut]]
        expected = outcome(lambda: parse_without_memo(truncated))
        assert outcome(lambda: parse_chunks(truncated)) == expected


def outcome(parse: Callable[[], list[MkvEvent]]) -> list[MkvEvent] | str:
    try:
        return parse()
    except MkvError as error:
        return str(error)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_repeated_fragments_parse_as_without_memo(data: st.DataObject) -> None:
    stream = bytearray(b"".join(repeated_fragment(number) for number in (1, 2, 3)))
    for _ in range(data.draw(st.integers(1, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    chunks = split_at(bytes(stream), cuts)
    assert outcome(lambda: parse_chunks(chunks)) == outcome(lambda: parse_without_memo(chunks))


# --- Lacing ---------------------------------------------------------------------------


def laced_stream(
    lacing_flags: int, frame_count: int, lace_header: bytes, payloads: list[bytes]
) -> bytes:
    laced = bytes([frame_count - 1]) + lace_header + b"".join(payloads)
    body = block_body(1, 7, 0x80 | lacing_flags, laced)
    return ebml_header() + segment(cluster(1000, element(SIMPLE_BLOCK, body, size_length=2)))


def test_xiph_lacing() -> None:
    payloads = [b"a" * 300, b"b" * 255, b"", b"c" * 3]
    # Xiph sizes: runs of 255 plus a final byte below 255, for all but the last frame.
    lace_header = bytes([255, 45]) + bytes([255, 0]) + bytes([0])
    stream = laced_stream(0x02, 4, lace_header, payloads)
    assert frames(parse_three_ways(stream)) == [Frame(1, 1007, p, True) for p in payloads]


def test_fixed_size_lacing() -> None:
    payloads = [b"aaaaa", b"bbbbb", b"ccccc"]
    stream = laced_stream(0x04, 3, b"", payloads)
    assert frames(parse_three_ways(stream)) == [Frame(1, 1007, p, True) for p in payloads]


def test_ebml_lacing() -> None:
    payloads = [b"a" * 300, b"b" * 10, b"c" * 700, b"d" * 2]
    first_size = (0x4000 | 300).to_bytes(2, "big")
    # Later sizes are signed differences biased by 2^(7n-1) - 1: -290 and +690 in 2 bytes.
    minus_290 = (0x4000 | (-290 + 8191)).to_bytes(2, "big")
    plus_690 = (0x4000 | (690 + 8191)).to_bytes(2, "big")
    stream = laced_stream(0x06, 4, first_size + minus_290 + plus_690, payloads)
    assert frames(parse_three_ways(stream)) == [Frame(1, 1007, p, True) for p in payloads]


@pytest.mark.parametrize(
    "lacing_flags, frame_count, lace_header, payload, message",
    [
        (0x04, 3, b"", b"x" * 10, "cannot be split into 3 equal frames"),
        (0x02, 2, bytes([200]), b"x" * 10, "lace sizes exceed the block"),
        (0x02, 3, bytes([255, 255]), b"", "Xiph lace sizes run past"),
        (0x06, 3, bytes([0x85, 0x80]), b"x" * 10, "negative EBML lace size"),
        (0x06, 2, bytes([0x00]), b"x", "invalid EBML lace size vint"),
    ],
)
def test_malformed_lacing_is_an_error(
    lacing_flags: int, frame_count: int, lace_header: bytes, payload: bytes, message: str
) -> None:
    with pytest.raises(MkvError, match=message):
        parse_chunks([laced_stream(lacing_flags, frame_count, lace_header, [payload])])


# --- Errors ---------------------------------------------------------------------------


def test_every_prefix_gives_a_prefix_of_the_events_or_a_truncation_error() -> None:
    stream = simple_fragment() + simple_fragment(2000, known_size_cluster=False)
    full = parse_chunks([stream])
    clean_ends = 0
    for cut in range(len(stream)):
        parser = MkvStreamParser()
        events = parser.feed(stream[:cut])
        assert events == full[: len(events)]
        try:
            events += parser.close()
        except MkvError as error:
            assert "ends inside" in str(error) or "before the end" in str(error)
        else:
            clean_ends += 1
            assert events == full[: len(events)]
    # Only between the elements of an unknown-size Segment or Cluster may input end.
    assert 0 < clean_ends < 20


@pytest.mark.parametrize(
    "cut_after, message",
    [
        (b"\x1a\x45", "ends inside an element header"),
        (b"\x1a\x45\xdf\xa3\x8f\x42\x86\x81\x01", "ends inside EBML"),
        (b"\x81\x00\x00\x80a", "ends inside SimpleBlock"),
        (b"\x45\xa3\x89ContactId", "ends inside Tags"),
        (b"\xec\x86\x00", "bytes before the end of a skipped element"),
    ],
)
def test_truncated_input_is_an_error_on_close(cut_after: bytes, message: str) -> None:
    stream = simple_fragment() + element(VOID, b"\x00" * 6)
    cut = stream.index(cut_after) + len(cut_after)
    parser = MkvStreamParser()
    parser.feed(stream[:cut])
    with pytest.raises(MkvError, match=message):
        parser.close()


def test_input_ending_between_elements_of_unknown_size_segment_and_cluster_is_fine() -> None:
    stream = ebml_header() + segment(cluster(1, simple_block(1, 0, b"a"), known_size=False))
    assert parse_chunks([stream])[-1] == Frame(1, 1, b"a", True)


@pytest.mark.parametrize(
    "element_header, name",
    [
        (b"\xa3\x01\xff\xff\xff\xff\xff\xff\xfe", "SimpleBlock (0xA3)"),
        (b"\x4f\xff\x01\x00\x00\x00\x7f\x00\x00\x00", "element 0x4FFF"),
    ],
)
def test_absurd_element_size_is_rejected_at_once(element_header: bytes, name: str) -> None:
    stream = ebml_header() + segment(unknown_size(CLUSTER), timecode(1)) + element_header
    parser = MkvStreamParser()
    tracemalloc.start()
    try:
        message = rf"{re.escape(name)} of size \d+ exceeds the limit"
        with pytest.raises(MkvError, match=message) as caught:
            parser.feed(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert caught.value.offset == len(stream) - len(element_header)


def test_max_element_size_is_inclusive() -> None:
    tag_string = element(TAG_STRING, b"v" * 1000, size_length=2)
    tag = element(TAG, element(SIMPLE_TAG, tag_string, size_length=2), size_length=2)
    stream = ebml_header() + segment(element(TAGS, tag, size_length=2))
    assert parse_chunks([stream], max_element_size=1000)[-1] == Tag("", "v" * 1000)
    with pytest.raises(MkvError, match="TagString .* of size 1000 exceeds the limit of 999"):
        parse_chunks([stream], max_element_size=999)


def test_child_running_past_its_parent_is_an_error() -> None:
    tags_of_4_bytes_holding_a_tag_of_8 = b"\x12\x54\xc3\x67\x84" + b"\x73\x73\x88" + b"\x00" * 4
    with pytest.raises(MkvError, match="runs 7 bytes past the end of its parent Tags"):
        parse_chunks([ebml_header() + segment(tags_of_4_bytes_holding_a_tag_of_8)])


def in_cluster(*children: bytes) -> bytes:
    return ebml_header() + segment(cluster(1, *children))


@pytest.mark.parametrize(
    "stream, message",
    [
        (b"GET / HTTP/1.1\r\n", "unexpected element 0x4745 at the top level"),
        (b"\x00\x00\x00\x00", "invalid element ID"),
        (b"\x08\x45\xdf\xa3\x81\x00", "invalid element ID"),
        (b"\x1a\x45\xdf\xa3\x00", "invalid element size"),
        (ebml_header() + segment(unknown_size(TAGS)), "Tags .* has unknown size"),
        (ebml_header() + unknown_size(CLUSTER), "Cluster .* has unknown size"),
        (
            ebml_header() + segment(element(CLUSTER, simple_block(1, 0, b"a"), size_length=2)),
            "block before",
        ),
        (
            ebml_header() + segment(element(TRACKS, element(TRACK_ENTRY, element(NAME, b"n")))),
            "without a TrackNumber",
        ),
        (
            in_cluster(element(BLOCK_GROUP, element(REFERENCE_BLOCK, b"\x01"))),
            "BlockGroup without a Block",
        ),
        (in_cluster(element(SIMPLE_BLOCK, b"\x81\x00")), "shorter than its header"),
        (in_cluster(element(SIMPLE_BLOCK, b"\x00\x00\x00\x00")), "invalid track number"),
        (
            ebml_header() + segment(element(INFO, element(TIMECODE_SCALE, b"\x01" * 9))),
            "at most 8 allowed",
        ),
    ],
)
def test_malformed_input_is_an_error(stream: bytes, message: str) -> None:
    with pytest.raises(MkvError, match=message):
        parse_chunks([stream])
    with pytest.raises(MkvError, match=message):
        parse_chunks(stream[i : i + 1] for i in range(len(stream)))


def test_error_names_the_byte_offset() -> None:
    prefix = simple_fragment()
    with pytest.raises(MkvError, match=rf"at byte offset {len(prefix)}\)") as caught:
        parse_chunks([prefix, b"\x00garbage"])
    assert isinstance(caught.value, ValueError)
    assert caught.value.offset == len(prefix)


def test_error_is_sticky() -> None:
    parser = MkvStreamParser()
    with pytest.raises(MkvError) as first:
        parser.feed(b"\x00")
    with pytest.raises(MkvError) as again:
        parser.feed(simple_fragment())
    assert again.value is first.value
    with pytest.raises(MkvError) as on_close:
        parser.close()
    assert on_close.value is first.value


def test_feed_after_close_is_an_error() -> None:
    parser = MkvStreamParser()
    assert parser.feed(simple_fragment()) == SIMPLE_FRAGMENT_EVENTS
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(MkvError, match="after close"):
        parser.feed(b"")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_mkv_error(garbage: bytes) -> None:
    try:
        parse_chunks([garbage])
    except MkvError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_fragment_parses_or_raises_mkv_error(data: st.DataObject) -> None:
    laced = laced_stream(0x06, 3, bytes([0x83, 0xBF]), [b"abc", b"abc", b"z"])
    stream = bytearray(simple_fragment() + laced)
    for _ in range(data.draw(st.integers(1, 4))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    try:
        parse_chunks([bytes(stream)])
    except MkvError:
        pass


def test_large_block_fed_in_small_chunks_is_reassembled() -> None:
    # Speed is measured by the parser benchmark, not asserted here: a timing threshold
    # in a unit test is a flaky test.
    payload = bytes(8 * 1024 * 1024)
    block_header = b"\xa3" + ((len(payload) + 4) | 1 << 56).to_bytes(8, "big")
    stream = (
        ebml_header()
        + segment(unknown_size(CLUSTER), timecode(0), block_header, block_body(1, 0, 0x80, b""))
        + payload
    )
    events = parse_chunks(stream[i : i + 1024] for i in range(0, len(stream), 1024))
    assert events[-1] == Frame(1, 0, payload, True)


def test_feeding_nothing_returns_nothing() -> None:
    parser = MkvStreamParser()
    assert parser.feed(b"") == []
    assert parser.close() == []
