"""write_fragment: KVS's layout byte for byte, and a round trip through the parser.

The layout checks read the output with a small EBML walker defined here, independent of
MkvStreamParser, because the parser deliberately ignores elements such as MuxingApp.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mkv import (
    BlockSpec,
    ClusterStart,
    EbmlHeader,
    Frame,
    MkvEvent,
    MkvStreamParser,
    SegmentInfo,
    Tag,
    TrackEntry,
    TrackSpec,
    write_fragment,
)

EBML, SEGMENT, INFO, TRACKS, TRACK_ENTRY = 0x1A45DFA3, 0x18538067, 0x1549A966, 0x1654AE6B, 0xAE
CLUSTER, TAGS, TAG, SIMPLE_TAG, SIMPLE_BLOCK = 0x1F43B675, 0x1254C367, 0x7373, 0x67C8, 0xA3
MASTERS = {EBML, SEGMENT, INFO, TRACKS, TRACK_ENTRY, CLUSTER, TAGS, TAG, SIMPLE_TAG}
SEGMENT_CHILDREN = frozenset({INFO, TRACKS, CLUSTER, TAGS})
UNKNOWN_SIZE_FIELD = bytes.fromhex("01ffffffffffffff")


@dataclass
class Node:
    element_id: int
    size_field: bytes
    body: bytes = b""
    children: list[Node] = field(default_factory=list)

    def child_ids(self) -> list[int]:
        return [child.element_id for child in self.children]

    def child(self, element_id: int) -> Node:
        (match,) = [child for child in self.children if child.element_id == element_id]
        return match

    def walk(self) -> Iterable[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


def read_elements(
    data: bytes, position: int, end: int, stop_ids: frozenset[int] = frozenset()
) -> tuple[list[Node], int]:
    """The elements in data[position:end]; an unknown-size Cluster ends at a Segment child."""
    nodes: list[Node] = []
    while position < end:
        id_length = 9 - data[position].bit_length()
        element_id = int.from_bytes(data[position : position + id_length], "big")
        if element_id in stop_ids:
            break
        size_start = position + id_length
        size_length = 9 - data[size_start].bit_length()
        size_field = data[size_start : size_start + size_length]
        body_start = size_start + size_length
        if size_field == UNKNOWN_SIZE_FIELD:
            stops = SEGMENT_CHILDREN if element_id == CLUSTER else frozenset()
            children, position = read_elements(data, body_start, end, stops)
            nodes.append(Node(element_id, size_field, children=children))
            continue
        size = int.from_bytes(size_field, "big") & ((1 << (7 * size_length)) - 1)
        body = data[body_start : body_start + size]
        children: list[Node] = []
        if element_id in MASTERS:
            children = read_elements(data, body_start, body_start + size)[0]
        nodes.append(Node(element_id, size_field, body, children))
        position = body_start + size
    return nodes, position


def parse_tree(data: bytes) -> list[Node]:
    return read_elements(data, 0, len(data))[0]


def parse(data: bytes) -> list[MkvEvent]:
    parser = MkvStreamParser()
    return parser.feed(data) + parser.close()


def parse_in_chunks(data: bytes, cuts: Iterable[int]) -> list[MkvEvent]:
    bounds = [0, *sorted(cuts), len(data)]
    parser = MkvStreamParser()
    events: list[MkvEvent] = []
    for start, end in zip(bounds, bounds[1:]):
        events += parser.feed(data[start:end])
    return events + parser.close()


TWO_TRACKS = [
    TrackSpec(1, "AUDIO_FROM_CUSTOMER"),
    TrackSpec(2, "AUDIO_TO_CUSTOMER", "A_AAC", b"\x15\x88"),
]


def sample_fragment(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = dict(
        tracks=TWO_TRACKS,
        cluster_timecode=1_726_677_688_724,
        blocks=[
            BlockSpec(1, 0, b"c0"),
            BlockSpec(2, 0, b"a0", keyframe=False),
            BlockSpec(1, 64, b"c1"),
        ],
        tags_before_cluster=[
            [
                ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", "91343"),
                ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "1726677687.758"),
            ]
        ],
        tags_after_cluster=[[("ContactId", "d111")], [("Events", "[]")]],
    )
    arguments.update(overrides)
    return write_fragment(**arguments)


def test_events_of_a_fragment() -> None:
    assert parse(sample_fragment()) == [
        EbmlHeader("matroska"),
        SegmentInfo(1_000_000, "Kinesis Video SDK"),
        TrackEntry(1, "AUDIO_FROM_CUSTOMER", "A_AAC"),
        TrackEntry(2, "AUDIO_TO_CUSTOMER", "A_AAC"),
        Tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER", "91343"),
        Tag("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "1726677687.758"),
        ClusterStart(1_726_677_688_724),
        Frame(1, 1_726_677_688_724, b"c0", True),
        Frame(2, 1_726_677_688_724, b"a0", False),
        Frame(1, 1_726_677_688_788, b"c1", True),
        Tag("ContactId", "d111"),
        Tag("Events", "[]"),
    ]


def test_ebml_header_and_segment_are_as_kvs_writes_them() -> None:
    ebml, segment = parse_tree(sample_fragment())
    assert (ebml.element_id, segment.element_id) == (EBML, SEGMENT)
    assert [(c.element_id, c.body) for c in ebml.children] == [
        (0x4286, b"\x01"),  # EBMLVersion
        (0x42F7, b"\x01"),  # EBMLReadVersion
        (0x42F2, b"\x04"),  # EBMLMaxIDLength
        (0x42F3, b"\x08"),  # EBMLMaxSizeLength
        (0x4282, b"matroska"),  # DocType
        (0x4287, b"\x02"),  # DocTypeVersion
        (0x4285, b"\x02"),  # DocTypeReadVersion
    ]
    assert segment.size_field == UNKNOWN_SIZE_FIELD
    assert segment.child_ids() == [INFO, TRACKS, TAGS, CLUSTER, TAGS, TAGS]
    # KVS writes 8-byte size fields even for one-byte elements.
    assert {len(node.size_field) for node in [ebml, *segment.walk()]} == {8}


def test_info_tracks_and_cluster_children() -> None:
    _, segment = parse_tree(sample_fragment(title="T", timecode_scale=1000))
    info = segment.child(INFO)
    assert info.child_ids() == [0x2AD7B1, 0x7BA9, 0x4D80, 0x5741, 0x73A4]
    assert info.child(0x2AD7B1).body == (1000).to_bytes(2, "big")
    assert info.child(0x7BA9).body == b"T"
    assert info.child(0x4D80).body == info.child(0x5741).body == b"Kinesis Video SDK 1.1.0 JNI 2.0"
    assert len(info.child(0x73A4).body) == 16

    customer, agent = segment.child(TRACKS).children
    assert customer.child_ids() == [0xD7, 0x73C5, 0x83, 0x536E, 0x86]  # no empty CodecPrivate
    assert agent.child_ids() == [0xD7, 0x73C5, 0x83, 0x536E, 0x86, 0x63A2]
    assert [agent.child(i).body for i in (0xD7, 0x73C5, 0x83, 0x536E, 0x86, 0x63A2)] == [
        b"\x02",
        b"\x02",
        b"\x02",  # TrackType audio
        b"AUDIO_TO_CUSTOMER",
        b"A_AAC",
        b"\x15\x88",
    ]

    cluster = segment.child(CLUSTER)
    assert cluster.child_ids() == [0xE7, 0xA7, SIMPLE_BLOCK, SIMPLE_BLOCK, SIMPLE_BLOCK]
    assert cluster.child(0xE7).body == (1_726_677_688_724).to_bytes(6, "big")
    assert cluster.child(0xA7).body == b"\x00"
    # Track vint, signed 16-bit relative timecode, flags (0x80 keyframe), payload.
    assert [b.body for b in cluster.children[2:]] == [
        b"\x81\x00\x00\x80c0",
        b"\x82\x00\x00\x00a0",
        b"\x81\x00\x40\x80c1",
    ]


def test_each_tag_group_is_one_tags_element_with_one_tag() -> None:
    _, segment = parse_tree(sample_fragment())
    before = segment.children[2]
    (tag,) = before.children
    assert tag.element_id == TAG
    assert [[(c.element_id, c.body) for c in simple.children] for simple in tag.children] == [
        [(0x45A3, b"AWS_KINESISVIDEO_FRAGMENT_NUMBER"), (0x4487, b"91343")],
        [(0x45A3, b"AWS_KINESISVIDEO_SERVER_TIMESTAMP"), (0x4487, b"1726677687.758")],
    ]


def test_unknown_size_cluster() -> None:
    data = sample_fragment(unknown_size_cluster=True)
    _, segment = parse_tree(data)
    assert segment.child_ids() == [INFO, TRACKS, TAGS, CLUSTER, TAGS, TAGS]
    assert segment.child(CLUSTER).size_field == UNKNOWN_SIZE_FIELD
    assert parse(data) == parse(sample_fragment())


def test_output_is_deterministic() -> None:
    assert sample_fragment() == sample_fragment()
    uid = parse_tree(sample_fragment())[1].child(INFO).child(0x73A4).body
    other_uid = parse_tree(sample_fragment(cluster_timecode=5))[1].child(INFO).child(0x73A4).body
    assert uid != other_uid


def test_multi_byte_track_number_and_extreme_relative_timecodes() -> None:
    data = write_fragment(
        tracks=[TrackSpec(1000, "big")],
        cluster_timecode=40_000,
        blocks=[BlockSpec(1000, -32768, b"a"), BlockSpec(1000, 32767, b"b")],
    )
    assert [e for e in parse(data) if isinstance(e, Frame)] == [
        Frame(1000, 40_000 - 32768, b"a", True),
        Frame(1000, 40_000 + 32767, b"b", True),
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"blocks": [BlockSpec(1, 32768, b"")]}, "does not fit a signed 16-bit"),
        ({"blocks": [BlockSpec(1, -32769, b"")]}, "does not fit a signed 16-bit"),
        ({"blocks": [BlockSpec(0, 0, b"")]}, "track number"),
        ({"tracks": [TrackSpec(0, "zero")]}, "track number"),
        ({"cluster_timecode": -1}, "must not be negative"),
        ({"timecode_scale": 0}, "must be positive"),
    ],
)
def test_values_matroska_cannot_carry_are_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_fragment(**overrides)


# --- Round trip -----------------------------------------------------------------------

# No NUL: the parser drops trailing zero bytes, which EBML uses as string padding.
texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
tag_groups = st.lists(st.lists(st.tuples(texts, texts), max_size=3), max_size=3)


@st.composite
def fragment_arguments(draw: st.DrawFn) -> dict[str, Any]:
    numbers = draw(st.lists(st.integers(1, 20_000), min_size=1, max_size=3, unique=True))
    block = st.builds(
        BlockSpec,
        track_number=st.sampled_from(numbers),
        relative_timecode=st.integers(-32768, 32767),
        payload=st.binary(max_size=40),
        keyframe=st.booleans(),
    )
    return dict(
        tracks=[
            TrackSpec(n, draw(texts), draw(texts), draw(st.binary(max_size=4))) for n in numbers
        ],
        cluster_timecode=draw(st.integers(0, 2**53)),
        blocks=draw(st.lists(block, max_size=8)),
        tags_before_cluster=draw(tag_groups),
        tags_after_cluster=draw(tag_groups),
        unknown_size_cluster=draw(st.booleans()),
        title=draw(texts),
        timecode_scale=draw(st.integers(1, 2**32)),
    )


def expected_events(arguments: dict[str, Any]) -> list[MkvEvent]:
    cluster_timecode = arguments["cluster_timecode"]
    return [
        EbmlHeader("matroska"),
        SegmentInfo(arguments["timecode_scale"], arguments["title"]),
        *(TrackEntry(t.number, t.name, t.codec_id) for t in arguments["tracks"]),
        *(Tag(name, value) for group in arguments["tags_before_cluster"] for name, value in group),
        ClusterStart(cluster_timecode),
        *(
            Frame(b.track_number, cluster_timecode + b.relative_timecode, b.payload, b.keyframe)
            for b in arguments["blocks"]
        ),
        *(Tag(name, value) for group in arguments["tags_after_cluster"] for name, value in group),
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(fragment_arguments(), min_size=1, max_size=3), st.data())
def test_round_trip_any_fragments_any_chunking(
    fragments: list[dict[str, Any]], data: st.DataObject
) -> None:
    stream = b"".join(write_fragment(**arguments) for arguments in fragments)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    expected = [event for arguments in fragments for event in expected_events(arguments)]
    assert parse_in_chunks(stream, cuts) == expected
