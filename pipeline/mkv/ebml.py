"""EBML primitives shared by the MKV parser and writer: element IDs and variable-size integers.

EBML (the binary format under Matroska) stores every element as ``ID, size, body``. The ID
and the size are "vints": the number of leading zero bits in the first byte, plus one, is
the length in bytes. IDs keep that length marker as part of their value (``0x1A45DFA3``);
sizes drop it, and a size whose value bits are all ones means "unknown size" (used by
KVS for Segments and Clusters that are written before their length is known).
"""

from __future__ import annotations

from typing import Final

# Top level.
EBML_HEADER: Final = 0x1A45DFA3
SEGMENT: Final = 0x18538067

# EBML header children.
EBML_VERSION: Final = 0x4286
EBML_READ_VERSION: Final = 0x42F7
EBML_MAX_ID_LENGTH: Final = 0x42F2
EBML_MAX_SIZE_LENGTH: Final = 0x42F3
DOC_TYPE: Final = 0x4282
DOC_TYPE_VERSION: Final = 0x4287
DOC_TYPE_READ_VERSION: Final = 0x4285

# Global elements, allowed anywhere.
VOID: Final = 0xEC
CRC32: Final = 0xBF

# Segment children.
SEEK_HEAD: Final = 0x114D9B74
INFO: Final = 0x1549A966
TRACKS: Final = 0x1654AE6B
CLUSTER: Final = 0x1F43B675
CUES: Final = 0x1C53BB6B
ATTACHMENTS: Final = 0x1941A469
CHAPTERS: Final = 0x1043A770
TAGS: Final = 0x1254C367

# Info children.
TIMECODE_SCALE: Final = 0x2AD7B1
TITLE: Final = 0x7BA9
MUXING_APP: Final = 0x4D80
WRITING_APP: Final = 0x5741
SEGMENT_UID: Final = 0x73A4

# Tracks.
TRACK_ENTRY: Final = 0xAE
TRACK_NUMBER: Final = 0xD7
TRACK_UID: Final = 0x73C5
TRACK_TYPE: Final = 0x83
NAME: Final = 0x536E
CODEC_ID: Final = 0x86
CODEC_PRIVATE: Final = 0x63A2

# Cluster.
TIMECODE: Final = 0xE7
POSITION: Final = 0xA7
SIMPLE_BLOCK: Final = 0xA3
BLOCK_GROUP: Final = 0xA0
BLOCK: Final = 0xA1
REFERENCE_BLOCK: Final = 0xFB

# Tags.
TAG: Final = 0x7373
SIMPLE_TAG: Final = 0x67C8
TAG_NAME: Final = 0x45A3
TAG_STRING: Final = 0x4487
TAG_BINARY: Final = 0x4485

#: The Segment's direct children; any of them ends an unknown-size Cluster.
SEGMENT_CHILDREN: Final = frozenset(
    {SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, ATTACHMENTS, CHAPTERS, TAGS}
)

ELEMENT_NAMES: Final[dict[int, str]] = {
    EBML_HEADER: "EBML",
    SEGMENT: "Segment",
    DOC_TYPE: "DocType",
    VOID: "Void",
    CRC32: "CRC-32",
    SEEK_HEAD: "SeekHead",
    INFO: "Info",
    TRACKS: "Tracks",
    CLUSTER: "Cluster",
    CUES: "Cues",
    ATTACHMENTS: "Attachments",
    CHAPTERS: "Chapters",
    TAGS: "Tags",
    TIMECODE_SCALE: "TimecodeScale",
    TITLE: "Title",
    TRACK_ENTRY: "TrackEntry",
    TRACK_NUMBER: "TrackNumber",
    NAME: "Name",
    CODEC_ID: "CodecID",
    CODEC_PRIVATE: "CodecPrivate",
    TIMECODE: "Timecode",
    SIMPLE_BLOCK: "SimpleBlock",
    BLOCK_GROUP: "BlockGroup",
    BLOCK: "Block",
    REFERENCE_BLOCK: "ReferenceBlock",
    TAG: "Tag",
    SIMPLE_TAG: "SimpleTag",
    TAG_NAME: "TagName",
    TAG_STRING: "TagString",
    TAG_BINARY: "TagBinary",
}

#: Matroska's EBMLMaxIDLength; longer IDs are not valid Matroska.
MAX_ID_LENGTH: Final = 4
MAX_SIZE_LENGTH: Final = 8
#: The largest size an 8-byte vint can carry; all ones (one more) means "unknown".
MAX_SIZE: Final = (1 << 56) - 2
#: What KVS writes as the size of a Segment (and sometimes a Cluster) of unknown length.
UNKNOWN_SIZE: Final = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def describe(element_id: int) -> str:
    """A readable name for error messages, e.g. ``SimpleBlock (0xA3)``."""
    name = ELEMENT_NAMES.get(element_id)
    return f"{name} (0x{element_id:X})" if name else f"element 0x{element_id:X}"


#: ``VINT_LENGTHS[first_byte]`` is the length in bytes of the vint starting with
#: ``first_byte``, 0 for a zero byte (not a vint of at most 8 bytes). A table because the
#: parser looks up two of these per element, and indexing beats ``int.bit_length()``.
VINT_LENGTHS: Final[tuple[int, ...]] = (0, *(9 - byte.bit_length() for byte in range(1, 256)))

#: ``VALUE_MASKS[length]`` keeps the value bits of a ``length``-byte size vint (drops its
#: length marker). The mask is also the reserved "unknown size" value: all value bits set.
VALUE_MASKS: Final[tuple[int, ...]] = tuple((1 << (7 * length)) - 1 for length in range(9))


def vint_length(first_byte: int) -> int:
    """Length in bytes of the vint starting with ``first_byte``; 0 if it is not a vint
    of at most 8 bytes (a zero first byte)."""
    return VINT_LENGTHS[first_byte]


def encode_id(element_id: int) -> bytes:
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def encode_size(size: int) -> bytes:
    """An 8-byte size field, as KVS writes even for one-byte elements."""
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"element size {size} does not fit an 8-byte EBML size")
    return (size | (1 << 56)).to_bytes(8, "big")


def encode_vint(value: int) -> bytes:
    """The shortest vint for ``value`` (block headers use it for the track number)."""
    for length in range(1, MAX_SIZE_LENGTH + 1):
        if value < (1 << (7 * length)) - 1:
            return (value | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(f"{value} does not fit an 8-byte EBML vint")


def encode_uint(value: int) -> bytes:
    """Big-endian unsigned integer in as few bytes as possible (at least one)."""
    if value < 0:
        raise ValueError(f"unsigned EBML integer cannot be negative: {value}")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def element(element_id: int, *body: bytes) -> bytes:
    """One element with a known size; ``body`` parts are concatenated."""
    payload = b"".join(body)
    return encode_id(element_id) + encode_size(len(payload)) + payload


def unknown_size_element_start(element_id: int) -> bytes:
    """The header of an element whose end is implied by what follows it."""
    return encode_id(element_id) + UNKNOWN_SIZE
