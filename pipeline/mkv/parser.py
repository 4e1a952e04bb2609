"""Incremental (sans-I/O) parser for the Matroska stream that KVS GetMedia returns.

Why hand-written: botocore's StreamingBody iterator yields ~1 KiB chunks whose boundaries
fall anywhere, including inside an element's ID or size, and a call's audio arrives as
an endless sequence of fragments (EBML header + unknown-size Segment each). The existing
Python KVS parsers re-parse their whole buffer each time a chunk arrives (quadratic over
a long call), and general Matroska libraries expect a complete, seekable file. This
parser takes bytes in any chunking, keeps only the unfinished tail of the input, and
reports events as soon as the bytes that complete them arrive. It has no I/O of its own:
an adapter moves bytes from the HTTP body into :meth:`MkvStreamParser.feed`, as
websockets' protocol core does with a socket.

How it stays O(n) with bounded memory: master elements (Segment, Cluster, Tags, ...) are
descended into rather than buffered; only leaf elements that carry something reported
(a block, a tag string, a track name, ...) are buffered whole, and those are limited by
``max_element_size``; anything else (Void, CRC-32, CodecPrivate, unknown IDs) is skipped
by discarding its bytes as they arrive. Buffered bytes are never re-parsed: a partial
element header (at most 12 bytes) is the only thing looked at again when more arrives.

Which elements are descended into or read depends on the parent, and is written down as
data in ``_CHILD_MASTERS`` / ``_CHILD_LEAVES`` / ``_ENDED_BY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from pipeline.mkv import ebml
from pipeline.mkv.events import (
    ClusterStart,
    EbmlHeader,
    Frame,
    MkvEvent,
    SegmentInfo,
    Tag,
    TrackEntry,
)

#: 32 MiB: far above a KVS fragment's largest frame (KVS caps a whole fragment at 50 MB
#: and Connect's audio blocks are ~1 KiB), small enough that a corrupt size field cannot
#: make the parser hold hundreds of megabytes.
DEFAULT_MAX_ELEMENT_SIZE: Final = 32 * 1024 * 1024

#: Master elements descended into, by parent (``None`` is the top level of the stream).
_CHILD_MASTERS: Final[dict[int | None, frozenset[int]]] = {
    None: frozenset({ebml.EBML_HEADER, ebml.SEGMENT}),
    ebml.SEGMENT: frozenset({ebml.INFO, ebml.TRACKS, ebml.CLUSTER, ebml.TAGS}),
    ebml.TRACKS: frozenset({ebml.TRACK_ENTRY}),
    ebml.CLUSTER: frozenset({ebml.BLOCK_GROUP}),
    ebml.TAGS: frozenset({ebml.TAG}),
    ebml.TAG: frozenset({ebml.SIMPLE_TAG}),
    ebml.SIMPLE_TAG: frozenset({ebml.SIMPLE_TAG}),
}

#: Leaf elements buffered and read, by parent. Every other child is skipped unread.
_CHILD_LEAVES: Final[dict[int | None, frozenset[int]]] = {
    ebml.EBML_HEADER: frozenset({ebml.DOC_TYPE}),
    ebml.INFO: frozenset({ebml.TIMECODE_SCALE, ebml.TITLE}),
    ebml.TRACK_ENTRY: frozenset({ebml.TRACK_NUMBER, ebml.NAME, ebml.CODEC_ID}),
    ebml.CLUSTER: frozenset({ebml.TIMECODE, ebml.SIMPLE_BLOCK}),
    ebml.BLOCK_GROUP: frozenset({ebml.BLOCK, ebml.REFERENCE_BLOCK}),
    ebml.SIMPLE_TAG: frozenset({ebml.TAG_NAME, ebml.TAG_STRING, ebml.TAG_BINARY}),
}

#: The elements Matroska allows to have unknown size, and the element IDs that end them
#: (an element that cannot be their child). Unknown IDs inside them are children.
_ENDED_BY: Final[dict[int, frozenset[int]]] = {
    ebml.SEGMENT: frozenset({ebml.EBML_HEADER, ebml.SEGMENT}),
    ebml.CLUSTER: ebml.SEGMENT_CHILDREN | {ebml.EBML_HEADER, ebml.SEGMENT},
}

#: Allowed at the top level besides the EBML header and Segment; anything else there
#: means the input is not Matroska (or we lost sync) and is reported as an error.
_TOP_LEVEL_SKIPPED: Final = frozenset({ebml.VOID, ebml.CRC32})

_MATROSKA_DEFAULT_TIMECODE_SCALE: Final = 1_000_000
_MAX_UINT_BYTES: Final = 8

_KEYFRAME_FLAG: Final = 0x80
_LACING_MASK: Final = 0x06
_NO_LACING: Final = 0x00
_XIPH_LACING: Final = 0x02
_FIXED_LACING: Final = 0x04
_EBML_LACING: Final = 0x06


class MkvError(ValueError):
    """The input is not a Matroska stream this parser can read. ``offset`` is the byte
    offset (from the first byte fed) of the element or field at fault."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


@dataclass(slots=True)
class _Header:
    element_id: int
    size: int | None  # None: unknown size
    start: int  # offset of the element's first ID byte
    body_start: int


@dataclass(slots=True)
class _OpenMaster:
    element_id: int
    start: int
    end: int | None  # None: unknown size
    # The nearest known end among this element and its ancestors: the position at which
    # this element is certainly over, even when its own size is unknown.
    limit: int | None
    children: dict[int, bytes] = field(default_factory=dict)


class MkvStreamParser:
    """Feed bytes in, get :mod:`~pipeline.mkv.events` out; no I/O.

    >>> from pipeline.mkv.writer import TrackSpec, BlockSpec, write_fragment
    >>> data = write_fragment(tracks=[TrackSpec(1, "AUDIO_FROM_CUSTOMER")],
    ...                       cluster_timecode=1000, blocks=[BlockSpec(1, 20, b"pcm")])
    >>> parser = MkvStreamParser()
    >>> [e for e in parser.feed(data[:100]) + parser.feed(data[100:]) if isinstance(e, Frame)]
    [Frame(track_number=1, timecode=1020, payload=b'pcm', keyframe=True)]
    >>> parser.close()
    []

    After an :class:`MkvError` the parser is failed: ``feed`` and ``close`` raise the
    same error again. Events completed earlier in the chunk that failed are lost with it.
    """

    def __init__(self, max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE) -> None:
        self._max_element_size = max_element_size
        self._buffer = bytearray()
        self._read_offset = 0  # index into _buffer of the next unparsed byte
        self._buffer_position = 0  # stream offset of _buffer[0]
        self._open: list[_OpenMaster] = []
        self._pending_leaf: _Header | None = None
        self._skip_remaining = 0
        self._cluster_timecode: int | None = None
        self._events: list[MkvEvent] = []
        self._error: MkvError | None = None
        self._closed = False

    def feed(self, data: bytes) -> list[MkvEvent]:
        """Parse ``data`` (any length, cut anywhere) and return the events it completed."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise MkvError("feed() after close()", self._position)
        self._buffer += data
        try:
            self._parse()
        except MkvError as error:
            self._error = error
            raise
        return self._take_events()

    def close(self) -> list[MkvEvent]:
        """Signal the end of input. Raises :class:`MkvError` if it ends inside an
        element; open unknown-size Segments and Clusters simply end."""
        if self._error is not None:
            raise self._error
        if self._closed:
            return []
        self._closed = True
        try:
            self._check_complete()
        except MkvError as error:
            self._error = error
            raise
        while self._open:
            self._end_master(self._open.pop())
        return self._take_events()

    @property
    def _position(self) -> int:
        return self._buffer_position + self._read_offset

    def _take_events(self) -> list[MkvEvent]:
        events, self._events = self._events, []
        return events

    def _check_complete(self) -> None:
        if self._pending_leaf is not None:
            header = self._pending_leaf
            raise MkvError(
                f"input ends inside {ebml.describe(header.element_id)}: "
                f"{header.size} body bytes expected, "
                f"{len(self._buffer) - self._read_offset} received",
                header.start,
            )
        if self._skip_remaining:
            raise MkvError(
                f"input ends {self._skip_remaining} bytes before the end of a skipped element",
                self._position,
            )
        if self._read_offset < len(self._buffer):
            raise MkvError("input ends inside an element header", self._position)
        for master in self._open:
            if master.end is not None:
                raise MkvError(
                    f"input ends inside {ebml.describe(master.element_id)}, "
                    f"{master.end - self._position} bytes before its end",
                    master.start,
                )

    def _parse(self) -> None:
        buffer = self._buffer
        while True:
            if self._skip_remaining:
                skipped = min(self._skip_remaining, len(buffer) - self._read_offset)
                self._read_offset += skipped
                self._skip_remaining -= skipped
                if self._skip_remaining:
                    break
                self._end_finished_masters()
            elif self._pending_leaf is not None:
                header = self._pending_leaf
                assert header.size is not None
                body_end = self._read_offset + header.size
                if len(buffer) < body_end:
                    break
                body = bytes(buffer[self._read_offset : body_end])
                self._read_offset = body_end
                self._pending_leaf = None
                self._read_leaf(header, body)
                self._end_finished_masters()
            else:
                header = self._read_header()
                if header is None:
                    break
                self._start_element(header)
        # Each byte is moved at most once: what remains is a partial header or the
        # start of a pending leaf, and the read offset does not advance past a pending
        # leaf until all of it has arrived.
        del buffer[: self._read_offset]
        self._buffer_position += self._read_offset
        self._read_offset = 0

    def _read_header(self) -> _Header | None:
        buffer, start = self._buffer, self._read_offset
        available = len(buffer) - start
        if available < 1:
            return None
        id_length = ebml.vint_length(buffer[start])
        if not 1 <= id_length <= ebml.MAX_ID_LENGTH:
            raise MkvError(
                f"invalid element ID: first byte 0x{buffer[start]:02X} "
                f"announces more than {ebml.MAX_ID_LENGTH} bytes",
                self._position,
            )
        if available < id_length + 1:
            return None
        size_length = ebml.vint_length(buffer[start + id_length])
        if size_length == 0:
            raise MkvError(
                "invalid element size: first byte 0x00 announces more than 8 bytes",
                self._position + id_length,
            )
        header_length = id_length + size_length
        if available < header_length:
            return None
        element_id = int.from_bytes(buffer[start : start + id_length], "big")
        size_field = int.from_bytes(buffer[start + id_length : start + header_length], "big")
        size = size_field & ((1 << (7 * size_length)) - 1)
        position = self._position
        self._read_offset += header_length
        return _Header(
            element_id=element_id,
            size=None if ebml.is_unknown_size(size, size_length) else size,
            start=position,
            body_start=position + header_length,
        )

    def _start_element(self, header: _Header) -> None:
        element_id = header.element_id
        self._end_unknown_size_masters(element_id)
        parent = self._open[-1] if self._open else None
        parent_id = parent.element_id if parent else None
        descend = element_id in _CHILD_MASTERS.get(parent_id, ())

        if header.size is None:
            if not (descend and element_id in _ENDED_BY):
                raise MkvError(
                    f"{ebml.describe(element_id)} has unknown size; only a Segment, or a "
                    "Cluster inside a Segment, may",
                    header.start,
                )
            end = None
        else:
            end = header.body_start + header.size
            if parent is not None and parent.limit is not None and end > parent.limit:
                raise MkvError(
                    f"{ebml.describe(element_id)} of size {header.size} runs "
                    f"{end - parent.limit} bytes past the end of its parent "
                    f"{ebml.describe(parent.element_id)}",
                    header.start,
                )

        if descend:
            self._open.append(
                _OpenMaster(
                    element_id=element_id,
                    start=header.start,
                    end=end,
                    limit=end if end is not None else (parent.limit if parent else None),
                )
            )
            if element_id == ebml.CLUSTER:
                self._cluster_timecode = None
            self._end_finished_masters()
            return

        if parent is None and element_id not in _TOP_LEVEL_SKIPPED:
            raise MkvError(
                f"unexpected {ebml.describe(element_id)} at the top level; "
                "expected an EBML header or a Segment",
                header.start,
            )
        assert header.size is not None
        if header.size > self._max_element_size:
            raise MkvError(
                f"{ebml.describe(element_id)} of size {header.size} exceeds the "
                f"limit of {self._max_element_size} bytes",
                header.start,
            )
        if element_id in _CHILD_LEAVES.get(parent_id, ()):
            self._pending_leaf = header
        elif header.size:
            self._skip_remaining = header.size
        else:
            self._end_finished_masters()

    def _end_unknown_size_masters(self, next_element_id: int) -> None:
        while (
            self._open
            and self._open[-1].end is None
            and next_element_id in _ENDED_BY[self._open[-1].element_id]
        ):
            self._end_master(self._open.pop())

    def _end_finished_masters(self) -> None:
        position = self._position
        while self._open and self._open[-1].limit == position:
            self._end_master(self._open.pop())

    def _read_leaf(self, header: _Header, body: bytes) -> None:
        parent = self._open[-1]
        element_id = header.element_id
        if parent.element_id == ebml.CLUSTER:
            if element_id == ebml.TIMECODE:
                self._cluster_timecode = _read_uint(body, header.start)
                self._events.append(ClusterStart(self._cluster_timecode))
            else:
                self._emit_frames(header.start, body, keyframe=None)
        else:
            parent.children[element_id] = body

    def _end_master(self, master: _OpenMaster) -> None:
        children = master.children
        element_id = master.element_id
        if element_id == ebml.EBML_HEADER:
            doc_type = _read_string(children.get(ebml.DOC_TYPE, b"matroska"))
            self._events.append(EbmlHeader(doc_type))
        elif element_id == ebml.INFO:
            scale = children.get(ebml.TIMECODE_SCALE)
            self._events.append(
                SegmentInfo(
                    timecode_scale=(
                        _MATROSKA_DEFAULT_TIMECODE_SCALE
                        if scale is None
                        else _read_uint(scale, master.start)
                    ),
                    title=_read_string(children.get(ebml.TITLE, b"")),
                )
            )
        elif element_id == ebml.TRACK_ENTRY:
            number = children.get(ebml.TRACK_NUMBER)
            if number is None:
                raise MkvError("TrackEntry without a TrackNumber", master.start)
            self._events.append(
                TrackEntry(
                    number=_read_uint(number, master.start),
                    name=_read_string(children.get(ebml.NAME, b"")),
                    codec_id=_read_string(children.get(ebml.CODEC_ID, b"")),
                )
            )
        elif element_id == ebml.BLOCK_GROUP:
            block = children.get(ebml.BLOCK)
            if block is None:
                raise MkvError("BlockGroup without a Block", master.start)
            # A Block is a keyframe exactly when it references no other frame.
            keyframe = ebml.REFERENCE_BLOCK not in children
            self._emit_frames(master.start, block, keyframe=keyframe)
        elif element_id == ebml.SIMPLE_TAG:
            binary = children.get(ebml.TAG_BINARY)
            string = children.get(ebml.TAG_STRING)
            if string is None and binary is not None:
                value = binary.hex()
            else:
                value = _read_string(string or b"")
            self._events.append(Tag(_read_string(children.get(ebml.TAG_NAME, b"")), value))
        elif element_id == ebml.CLUSTER:
            self._cluster_timecode = None

    def _emit_frames(self, block_start: int, block: bytes, *, keyframe: bool | None) -> None:
        """Report a SimpleBlock (``keyframe`` None: read from its flags) or a Block."""
        if self._cluster_timecode is None:
            raise MkvError("block before its Cluster's Timecode", block_start)
        track_number, relative_timecode, flags, payloads = _decode_block(block, block_start)
        if keyframe is None:
            keyframe = bool(flags & _KEYFRAME_FLAG)
        timecode = self._cluster_timecode + relative_timecode
        self._events.extend(
            Frame(track_number, timecode, payload, keyframe) for payload in payloads
        )


def _read_uint(body: bytes, offset: int) -> int:
    if len(body) > _MAX_UINT_BYTES:
        raise MkvError(f"unsigned integer of {len(body)} bytes (at most 8 allowed)", offset)
    return int.from_bytes(body, "big")


def _read_string(body: bytes) -> str:
    # EBML strings may be padded with zero bytes (KVS pads DocType and track names).
    # A bad byte in a tag must not stop a call's audio, hence "replace".
    return body.rstrip(b"\x00").decode("utf-8", errors="replace")


def _decode_block(block: bytes, offset: int) -> tuple[int, int, int, list[bytes]]:
    """Split a SimpleBlock/Block body into track number, relative timecode, flags and
    the payload of each (laced) frame."""

    def fail(message: str) -> MkvError:
        return MkvError(f"malformed block: {message}", offset)

    if not block:
        raise fail("empty")
    track_length = ebml.vint_length(block[0])
    if track_length == 0:
        raise fail("invalid track number vint")
    header_end = track_length + 3
    if len(block) < header_end:
        raise fail(f"{len(block)} bytes is shorter than its header")
    track_number = int.from_bytes(block[:track_length], "big") & (
        (1 << (7 * track_length)) - 1
    )
    relative_timecode = int.from_bytes(
        block[track_length : track_length + 2], "big", signed=True
    )
    flags = block[track_length + 2]
    lacing = flags & _LACING_MASK
    if lacing == _NO_LACING:
        return track_number, relative_timecode, flags, [block[header_end:]]

    if len(block) <= header_end:
        raise fail("laced block without a frame count")
    frame_count = block[header_end] + 1
    position = header_end + 1
    sizes: list[int] = []
    if lacing == _XIPH_LACING:
        for _ in range(frame_count - 1):
            size = 0
            while True:
                if position >= len(block):
                    raise fail("Xiph lace sizes run past the end of the block")
                byte = block[position]
                position += 1
                size += byte
                if byte != 255:
                    break
            sizes.append(size)
    elif lacing == _EBML_LACING:
        for index in range(frame_count - 1):
            if position >= len(block):
                raise fail("EBML lace sizes run past the end of the block")
            length = ebml.vint_length(block[position])
            if length == 0 or position + length > len(block):
                raise fail("invalid EBML lace size vint")
            raw = int.from_bytes(block[position : position + length], "big") & (
                (1 << (7 * length)) - 1
            )
            position += length
            if index == 0:
                size = raw
            else:
                # Later sizes are signed differences, stored with a bias of half the range.
                size = sizes[-1] + raw - ((1 << (7 * length - 1)) - 1)
                if size < 0:
                    raise fail("negative EBML lace size")
            sizes.append(size)
    else:
        remaining = len(block) - position
        if remaining % frame_count:
            raise fail(f"{remaining} bytes cannot be split into {frame_count} equal frames")
        sizes = [remaining // frame_count] * (frame_count - 1)

    last_size = len(block) - position - sum(sizes)
    if last_size < 0:
        raise fail("lace sizes exceed the block")
    payloads: list[bytes] = []
    for size in [*sizes, last_size]:
        payloads.append(block[position : position + size])
        position += size
    return track_number, relative_timecode, flags, payloads
