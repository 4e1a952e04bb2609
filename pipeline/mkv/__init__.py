"""Matroska (MKV) as KVS GetMedia returns it: a streaming parser and KVS/Connect writers."""

from pipeline.mkv.connect import (
    AGENT_TRACK_NAME,
    CONNECT_CODEC_ID,
    CUSTOMER_TRACK_NAME,
    write_connect_fragment,
)
from pipeline.mkv.events import (
    ClusterStart,
    EbmlHeader,
    Frame,
    MkvEvent,
    SegmentInfo,
    Tag,
    TrackEntry,
)
from pipeline.mkv.parser import MkvError, MkvStreamParser
from pipeline.mkv.writer import BlockSpec, TagGroup, TrackSpec, write_fragment

__all__ = [
    "AGENT_TRACK_NAME",
    "BlockSpec",
    "CONNECT_CODEC_ID",
    "CUSTOMER_TRACK_NAME",
    "ClusterStart",
    "EbmlHeader",
    "Frame",
    "MkvError",
    "MkvEvent",
    "MkvStreamParser",
    "SegmentInfo",
    "Tag",
    "TagGroup",
    "TrackEntry",
    "TrackSpec",
    "write_connect_fragment",
    "write_fragment",
]
