"""Events produced by :class:`pipeline.mkv.parser.MkvStreamParser`.

The parser reports what a KVS consumer acts on, not the element tree: where a fragment
starts, its tracks, each media frame with an absolute timecode, and each tag. Events
are immutable values so a test can compare whole sequences with ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, TypeAlias


@dataclass(frozen=True, slots=True)
class EbmlHeader:
    """An EBML header was read: a new fragment (EBML header + Segment) starts."""

    doc_type: str


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """The Segment's Info element. Timecodes are in units of ``timecode_scale`` ns."""

    timecode_scale: int
    title: str


@dataclass(frozen=True, slots=True)
class TrackEntry:
    """One track of the Segment, in the order the TrackEntry elements appear."""

    number: int
    name: str
    codec_id: str


@dataclass(frozen=True, slots=True)
class ClusterStart:
    """A Cluster's Timecode was read; following frames are relative to it."""

    timecode: int


class Frame(NamedTuple):
    """One media frame. ``timecode`` is absolute: the Cluster's timecode plus the
    block's signed 16-bit relative timecode. Frames laced into one block share it.

    A named tuple, unlike the other events, because a call has ~32 frames per second
    per contact, and the parser builds one (with ``tuple.__new__``) in a quarter of a
    frozen dataclass's time; it is as immutable, and compares equal only to a frame or
    a plain tuple of the same values.
    """

    track_number: int
    timecode: int
    payload: bytes
    keyframe: bool


@dataclass(frozen=True, slots=True)
class Tag:
    """One SimpleTag. A binary value (TagBinary) is given as lowercase hex."""

    name: str
    value: str


MkvEvent: TypeAlias = EbmlHeader | SegmentInfo | TrackEntry | ClusterStart | Frame | Tag
