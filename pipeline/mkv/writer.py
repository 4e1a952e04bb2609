"""Writes one KVS-style Matroska fragment, as GetMedia returns it.

Tests and the KVS emulator need byte streams with the quirks of real KVS output rather
than of a general-purpose muxer: a fresh EBML header per fragment, a Segment of unknown
size, 8-byte size fields even on one-byte elements, tags before and after the Cluster,
and optionally an unknown-size Cluster. Output is deterministic (the SegmentUID is
derived from the inputs instead of being random) so fixtures built from it are stable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from pipeline.mkv import ebml

#: One Tags element: its (TagName, TagString) pairs, written as one Tag.
TagGroup: TypeAlias = Sequence[tuple[str, str]]

KVS_MUXING_APP: Final = "Kinesis Video SDK 1.1.0 JNI 2.0"
_TRACK_TYPE_AUDIO: Final = 2
_KEYFRAME_FLAG: Final = 0x80
_INT16_MIN: Final = -(1 << 15)
_INT16_MAX: Final = (1 << 15) - 1
_SEGMENT_UID_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class TrackSpec:
    number: int
    name: str
    codec_id: str = "A_AAC"
    codec_private: bytes = b""


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """A SimpleBlock; ``relative_timecode`` is relative to the Cluster's timecode."""

    track_number: int
    relative_timecode: int
    payload: bytes
    keyframe: bool = True


def write_fragment(
    *,
    tracks: Sequence[TrackSpec],
    cluster_timecode: int,
    blocks: Iterable[BlockSpec],
    tags_before_cluster: Sequence[TagGroup] = (),
    tags_after_cluster: Sequence[TagGroup] = (),
    unknown_size_cluster: bool = False,
    title: str = "Kinesis Video SDK",
    timecode_scale: int = 1_000_000,
) -> bytes:
    """One fragment: EBML header, then an unknown-size Segment holding Info, Tracks,
    ``tags_before_cluster``, one Cluster with ``blocks`` as SimpleBlocks, and
    ``tags_after_cluster``. Each tag group becomes one Tags element.

    Raises ``ValueError`` for values Matroska cannot carry (a relative timecode outside
    a signed 16-bit integer, a negative cluster timecode, a track number of 0, ...).
    """
    if cluster_timecode < 0:
        raise ValueError(f"cluster_timecode must not be negative: {cluster_timecode}")
    if timecode_scale <= 0:
        raise ValueError(f"timecode_scale must be positive: {timecode_scale}")
    cluster_body = [
        ebml.element(ebml.TIMECODE, ebml.encode_uint(cluster_timecode)),
        ebml.element(ebml.POSITION, ebml.encode_uint(0)),
        *(ebml.element(ebml.SIMPLE_BLOCK, _simple_block_body(block)) for block in blocks),
    ]
    if unknown_size_cluster:
        cluster = ebml.unknown_size_element_start(ebml.CLUSTER) + b"".join(cluster_body)
    else:
        cluster = ebml.element(ebml.CLUSTER, *cluster_body)
    return b"".join(
        [
            _ebml_header(),
            ebml.unknown_size_element_start(ebml.SEGMENT),
            _info(title, timecode_scale, _segment_uid(cluster_timecode, tracks)),
            ebml.element(ebml.TRACKS, *(_track_entry(track) for track in tracks)),
            *(_tags(group) for group in tags_before_cluster),
            cluster,
            *(_tags(group) for group in tags_after_cluster),
        ]
    )


def _ebml_header() -> bytes:
    return ebml.element(
        ebml.EBML_HEADER,
        ebml.element(ebml.EBML_VERSION, ebml.encode_uint(1)),
        ebml.element(ebml.EBML_READ_VERSION, ebml.encode_uint(1)),
        ebml.element(ebml.EBML_MAX_ID_LENGTH, ebml.encode_uint(ebml.MAX_ID_LENGTH)),
        ebml.element(ebml.EBML_MAX_SIZE_LENGTH, ebml.encode_uint(ebml.MAX_SIZE_LENGTH)),
        ebml.element(ebml.DOC_TYPE, b"matroska"),
        ebml.element(ebml.DOC_TYPE_VERSION, ebml.encode_uint(2)),
        ebml.element(ebml.DOC_TYPE_READ_VERSION, ebml.encode_uint(2)),
    )


def _info(title: str, timecode_scale: int, segment_uid: bytes) -> bytes:
    muxing_app = KVS_MUXING_APP.encode()
    return ebml.element(
        ebml.INFO,
        ebml.element(ebml.TIMECODE_SCALE, ebml.encode_uint(timecode_scale)),
        ebml.element(ebml.TITLE, title.encode()),
        ebml.element(ebml.MUXING_APP, muxing_app),
        ebml.element(ebml.WRITING_APP, muxing_app),
        ebml.element(ebml.SEGMENT_UID, segment_uid),
    )


def _segment_uid(cluster_timecode: int, tracks: Sequence[TrackSpec]) -> bytes:
    identity = repr((cluster_timecode, [(t.number, t.name) for t in tracks])).encode()
    return hashlib.blake2b(identity, digest_size=_SEGMENT_UID_BYTES).digest()


def _track_entry(track: TrackSpec) -> bytes:
    if track.number < 1:
        raise ValueError(f"track number must be at least 1: {track.number}")
    children = [
        ebml.element(ebml.TRACK_NUMBER, ebml.encode_uint(track.number)),
        ebml.element(ebml.TRACK_UID, ebml.encode_uint(track.number)),
        ebml.element(ebml.TRACK_TYPE, ebml.encode_uint(_TRACK_TYPE_AUDIO)),
        ebml.element(ebml.NAME, track.name.encode()),
        ebml.element(ebml.CODEC_ID, track.codec_id.encode()),
    ]
    if track.codec_private:
        children.append(ebml.element(ebml.CODEC_PRIVATE, track.codec_private))
    return ebml.element(ebml.TRACK_ENTRY, *children)


def _tags(group: TagGroup) -> bytes:
    simple_tags = (
        ebml.element(
            ebml.SIMPLE_TAG,
            ebml.element(ebml.TAG_NAME, name.encode()),
            ebml.element(ebml.TAG_STRING, value.encode()),
        )
        for name, value in group
    )
    return ebml.element(ebml.TAGS, ebml.element(ebml.TAG, *simple_tags))


def _simple_block_body(block: BlockSpec) -> bytes:
    if block.track_number < 1:
        raise ValueError(f"track number must be at least 1: {block.track_number}")
    if not _INT16_MIN <= block.relative_timecode <= _INT16_MAX:
        raise ValueError(
            f"relative timecode {block.relative_timecode} does not fit a signed 16-bit "
            "integer; start a new cluster"
        )
    return b"".join(
        [
            ebml.encode_vint(block.track_number),
            block.relative_timecode.to_bytes(2, "big", signed=True),
            bytes([_KEYFRAME_FLAG if block.keyframe else 0]),
            block.payload,
        ]
    )
