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
element header (at most 12 bytes), or the start of a repeated master held back until
it is whole (at most 2 KiB, compared with its template, not parsed, below), is the
only thing looked at again when more arrives, and the chunks of a leaf that is still
arriving are joined once, when it is complete.

Which elements are descended into or read depends on the parent, and is written down as
data in ``_CHILD_MASTERS`` / ``_CHILD_LEAVES`` / ``_ENDED_BY``.

How it stays fast: a Connect call is ~100 elements and ~30 chunks per second of audio,
so what a parse costs is Python's work per element and per chunk, not per byte.
:meth:`MkvStreamParser._parse` is one loop over local variables that builds no object
per element header, reloads what it knows of the innermost open master only when a
master starts or ends, and sees a master end by comparing the position with one number.
Inside a Cluster, :meth:`MkvStreamParser._read_blocks` reads SimpleBlocks laid out as
KVS writes them with one ``struct`` call each, and completes a block cut by a chunk
with one join of its payload, not of the chunk. And KVS repeats the EBML header, Info
and Tracks byte for byte in every fragment, as Connect does with its per-contact Tags:
when such a master is whole in the buffer, its events are looked up by its bytes
instead of being parsed again (``_MEMOIZED_MASTERS``). Where only values change (the
fragment number and timestamp tags), a template of the master (``_Template``) gives
its structure, and only the values are read. A master that a chunk cuts before its
first event is kept until it is whole, to be looked up then: that delays no event.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final, TypeAlias, TypeVar

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

# What the parse loop does with an element: the tables above as one lookup by parent,
# then by ID. An ID missing from its parent's actions is skipped.
_DESCEND: Final = 1
_READ: Final = 2
_SKIP: Final = 3
_CHILD_ACTIONS: Final[dict[int | None, Mapping[int, int]]] = {
    parent: {
        **dict.fromkeys(_CHILD_LEAVES.get(parent, ()), _READ),
        **dict.fromkeys(_CHILD_MASTERS.get(parent, ()), _DESCEND),
    }
    for parent in _CHILD_MASTERS.keys() | _CHILD_LEAVES.keys()
}
_NO_CHILD_ACTIONS: Final[Mapping[int, int]] = {}

#: Masters that keep their leaves until they end, and then report them as one event. A
#: Cluster's leaves (Timecode, SimpleBlock) are reported as soon as they are read.
_COLLECTS_CHILDREN: Final = frozenset(_CHILD_LEAVES) - {ebml.CLUSTER}

#: Masters whose events depend on nothing but their own bytes, and that KVS repeats from
#: fragment to fragment, byte for byte or with other values. Only a master whole in the
#: buffer is looked up; one that a chunk cuts is held back only where that delays no
#: event (:meth:`MkvStreamParser._holds_for_template`). The memo keeps the events of at
#: most ``_MEMO_CAPACITY`` masters of at most ``_MEMO_MAX_ELEMENT_BYTES`` each (KVS's
#: are a few hundred bytes), and as many templates (``_Template``), dropping the least
#: recently used: more entries than the masters one fragment repeats (10 in a Connect
#: stream with KVS's tags), and a fixed bound whatever the input.
_MEMOIZED_MASTERS: Final = frozenset({ebml.EBML_HEADER, ebml.INFO, ebml.TRACKS, ebml.TAGS})
_MEMO_MAX_ELEMENT_BYTES: Final = 2048
_MEMO_CAPACITY: Final = 16


class _TagValueHole:
    """In a template's events, a Tag whose value is the string at ``start:end`` of the
    master (offsets from its first byte)."""

    __slots__ = ("name", "start", "end")

    def __init__(self, name: str, start: int, end: int) -> None:
        self.name = name
        self.start = start
        self.end = end


#: What a memoized master's events are when only some bytes of it change from fragment
#: to fragment, as KVS's fragment number and timestamp tags do (and a writer's
#: SegmentUID): (fixed_parts, events, first_event_end). A master of the same ID and
#: length whose bytes at each ``(offset, part)`` of ``fixed_parts`` are ``part`` has the
#: same element headers, hence the same structure, and differs only in the bodies
#: between the parts: leaves the parser skips unread, and the last TagString of each
#: SimpleTag, whose Tag is a :class:`_TagValueHole` in ``events``. ``first_event_end``
#: is the offset of the byte after the one that completes its first event (its length
#: if it has none).
_Template: TypeAlias = tuple[
    tuple[tuple[int, bytes], ...], tuple["MkvEvent | _TagValueHole", ...], int
]

#: The limit of an element with no known end around it: beyond any offset, since sizes
#: are below 2**56, so that reaching the limit is one comparison with no None check.
_NO_LIMIT: Final = 1 << 64
_NOT_ENDED_BY_ANYTHING: Final[frozenset[int]] = frozenset()

#: The bytes under which a memoized master's events are recorded when it ends, and
#: where those events start in the event list.
_MemoRecording: TypeAlias = tuple[bytes, int]

#: A master being descended into: (element_id, start, end, limit, children,
#: child_actions, ended_by, memo_recording). ``end`` is None for an unknown size;
#: ``limit`` is the nearest known end among this element and its ancestors (where it is
#: certainly over); ``children`` is None when nothing is done at its end, else the
#: leaves kept for its event; ``ended_by`` is empty unless it has unknown size. A tuple
#: rather than a class because one is built for every master of every fragment, and a
#: tuple is several times cheaper to build.
_OpenMaster: TypeAlias = tuple[
    int | None,
    int,
    int | None,
    int,
    dict[int, bytes] | None,
    Mapping[int, int],
    frozenset[int],
    _MemoRecording | None,
]
#: The bottom of the stack, so that the loop always has a parent: the stream itself.
_TOP_LEVEL: Final[_OpenMaster] = (
    None, 0, None, _NO_LIMIT, None, _CHILD_ACTIONS[None], _NOT_ENDED_BY_ANYTHING, None
)

#: A leaf whose header has been read and whose body has not all arrived:
#: (element_id, start, size). The unparsed bytes are the start of its body.
_PendingLeaf: TypeAlias = tuple[int, int, int]
#: The same for a SimpleBlock taken by the fast path, whose frame is decoded but for the
#: payload: (start, end, track_number, timecode, keyframe, cluster_timecode,
#: cluster_end, payload_start), ``end`` and ``cluster_end`` stream offsets too (the
#: Cluster's limit), ``payload_start`` the part of the payload in the chunk that
#: started it. The unparsed bytes are the rest received since. It holds what reading
#: the next block needs, so that completing a block, once per chunk in a call, reads
#: nothing else of the parser's state.
_AwaitedBlock: TypeAlias = tuple[int, int, int, int, bool, int, int, bytes]

#: ``_ID_LENGTHS[first_byte]``: length of an element ID, 0 if it would exceed Matroska's
#: EBMLMaxIDLength (or the byte is zero).
_ID_LENGTHS: Final = tuple(
    length if length <= ebml.MAX_ID_LENGTH else 0 for length in ebml.VINT_LENGTHS
)
_ONE_BYTE_VALUE_MASK: Final = ebml.VALUE_MASKS[1]
_EIGHT_BYTE_VALUE_MASK: Final = ebml.VALUE_MASKS[8]
_read_u16_at: Final = struct.Struct(">H").unpack_from
_read_u32_at: Final = struct.Struct(">I").unpack_from
_read_u64_at: Final = struct.Struct(">Q").unpack_from
#: Builds a :class:`Frame` from a tuple of its fields without the named tuple's own
#: ``__new__``, a Python function that would double the cost of the fast path's frames.
_new_frame: Final = tuple.__new__

#: A SimpleBlock as KVS writes it: ID 0xA3, an 8-byte size, then the block header with
#: a one-byte track number vint, a signed 16-bit relative timecode and the flags.
_read_kvs_block_header_at: Final = struct.Struct(">BQBhB").unpack_from
_KVS_ELEMENT_HEADER_BYTES: Final = 9
_SHORT_BLOCK_HEADER_BYTES: Final = 4
_KVS_BLOCK_HEADER_BYTES: Final = _KVS_ELEMENT_HEADER_BYTES + _SHORT_BLOCK_HEADER_BYTES
#: An 8-byte size vint read as an integer is its value plus this length marker.
_EIGHT_BYTE_SIZE_MARKER: Final = 1 << 56
#: The first byte of an 8-byte size vint: its length marker alone.
_EIGHT_BYTE_SIZE_FIRST_BYTE: Final = 0x01
_ONE_BYTE_VINT_MARKER: Final = 0x80
#: What :meth:`MkvStreamParser._read_blocks` returns when it stopped at a block whose
#: body has not all arrived (not a position: positions are never negative).
_AWAITING_BLOCK: Final = -1

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
        # The largest SimpleBlock the fast path reads; it also keeps out an unknown size.
        self._max_fast_block_size = min(max_element_size, ebml.MAX_SIZE)
        # The input not parsed yet: a partial element header, or the part of a pending
        # leaf's body received so far. The chunks are joined when parsing can go on, so
        # a large leaf arriving in small chunks is copied once, not once per chunk.
        self._unparsed: list[bytes] = []
        self._bytes_needed = 0  # to complete the pending leaf; 0 when any byte may help
        # Stream offset of the first unparsed byte, but while a block is awaited: its
        # end tells then, so that awaiting one, once per chunk in a call, costs no store.
        self._buffer_position = 0
        self._open: list[_OpenMaster] = [_TOP_LEVEL]
        self._pending_leaf: _PendingLeaf | None = None
        self._awaited_block: _AwaitedBlock | None = None
        self._block_header_kept = False  # the unparsed bytes start a block header
        self._skip_remaining = 0
        self._cluster_timecode: int | None = None
        self._memo: dict[bytes, tuple[MkvEvent, ...]] = {}
        self._templates: dict[tuple[int, int], _Template] = {}  # by (element ID, length)
        self._events: list[MkvEvent] = []
        self._error: MkvError | None = None
        self._closed = False

    def feed(self, data: bytes) -> list[MkvEvent]:
        """Parse ``data`` (any length, cut anywhere) and return the events it completed."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise MkvError("feed() after close()", self._buffer_position)
        if data.__class__ is not bytes:
            # Unparsed input is kept by reference: a bytearray the caller reuses must
            # not change under the parser.
            data = bytes(memoryview(data))
        unparsed = self._unparsed
        bytes_needed = self._bytes_needed
        if len(data) < bytes_needed:
            unparsed.append(data)
            self._bytes_needed = bytes_needed - len(data)
            return []
        try:
            if self._awaited_block is not None:
                # The rest of the awaited block is data[:bytes_needed]: only its payload
                # is joined, and what follows is parsed in place.
                position = self._read_blocks(data, bytes_needed)
                if position != _AWAITING_BLOCK:
                    self._parse(data, position)
            else:
                if unparsed:
                    unparsed.append(data)
                    data = b"".join(unparsed)
                    unparsed.clear()
                position = 0
                if self._block_header_kept:
                    self._block_header_kept = False
                    position = self._read_blocks(data, 0)
                if position != _AWAITING_BLOCK:
                    self._parse(data, position)
        except MkvError as error:
            self._error = error
            raise
        events = self._events
        self._events = []
        return events

    def close(self) -> list[MkvEvent]:
        """Signal the end of input. Raises :class:`MkvError` if it ends inside an
        element; open unknown-size Segments and Clusters simply end."""
        if self._error is not None:
            raise self._error
        if self._closed:
            return []
        self._closed = True
        try:
            if self._unparsed and self._pending_leaf is None and self._awaited_block is None:
                # A partial element header, or the start of a master held back for its
                # template: parsed now, so that the error says what the input ends in.
                held = b"".join(self._unparsed)
                self._unparsed.clear()
                self._parse(held, 0)
            self._check_complete()
            while len(self._open) > 1:
                self._end_master(self._open.pop())
        except MkvError as error:
            self._error = error
            raise
        events = self._events
        self._events = []
        return events

    def _check_complete(self) -> None:
        position = self._buffer_position
        pending_leaf = self._pending_leaf
        received = sum(map(len, self._unparsed))
        if self._awaited_block is not None:
            start, end, *_ = self._awaited_block
            size = end - start - _KVS_ELEMENT_HEADER_BYTES
            pending_leaf = (ebml.SIMPLE_BLOCK, start, size)
            received = size - self._bytes_needed
        if pending_leaf is not None:
            element_id, start, size = pending_leaf
            raise MkvError(
                f"input ends inside {ebml.describe(element_id)}: "
                f"{size} body bytes expected, {received} received",
                start,
            )
        if self._skip_remaining:
            raise MkvError(
                f"input ends {self._skip_remaining} bytes before the end of a skipped element",
                position,
            )
        if self._unparsed:
            raise MkvError("input ends inside an element header", position)
        for element_id, start, end, *_ in self._open[1:]:
            if end is not None:
                raise MkvError(
                    f"input ends inside {ebml.describe(element_id)}, "
                    f"{end - position} bytes before its end",
                    start,
                )

    def _parse(self, buffer: bytes, position: int) -> None:
        """Parse ``buffer`` (the unparsed bytes, then the new ones) from ``position``,
        and keep what cannot be parsed yet.

        One iteration handles one element: it reads the header, unless it resumes a
        pending leaf or skip, pushes a master, and reads or skips a leaf once its body
        is all in the buffer; after a leaf in a Cluster, the fast path reads the blocks
        that follow. Positions are indices into ``buffer``, whose first byte is at stream
        offset ``buffer_position``. Invariant: ``parent_id``, ``parent_limit`` (as an
        index), ``parent_children``, ``child_actions`` and ``ended_by`` describe
        ``open_masters[-1]``; they are reloaded whenever a master is pushed or popped.
        """
        available = len(buffer)
        buffer_position = self._buffer_position
        events = self._events
        open_masters = self._open
        parent_id, _, _, parent_limit, parent_children, child_actions, ended_by, _ = (
            open_masters[-1]
        )
        parent_limit -= buffer_position
        cluster_timecode = self._cluster_timecode

        # The element whose body is read (action _READ) or skipped (_SKIP) next, if any:
        # a pending leaf or skip left by the previous call has its body at index 0.
        action: int | None = None
        element_id = element_start = body_start = body_end = 0
        self._bytes_needed = 0
        if self._pending_leaf is not None:
            element_id, element_start, body_end = self._pending_leaf
            action = _READ
            self._pending_leaf = None
        elif self._skip_remaining:
            action, body_end = _SKIP, self._skip_remaining
            self._skip_remaining = 0

        while True:
            while position == parent_limit:
                if parent_children is None:
                    open_masters.pop()
                else:
                    self._end_master(open_masters.pop())
                parent_id, _, _, parent_limit, parent_children, child_actions, ended_by, _ = (
                    open_masters[-1]
                )
                parent_limit -= buffer_position

            if action is None:
                if position >= available:
                    break
                first_byte = buffer[position]
                id_length = _ID_LENGTHS[first_byte]
                if not id_length:
                    raise MkvError(
                        f"invalid element ID: first byte 0x{first_byte:02X} "
                        f"announces more than {ebml.MAX_ID_LENGTH} bytes",
                        buffer_position + position,
                    )
                size_position = position + id_length
                if size_position >= available:
                    break
                size_first_byte = buffer[size_position]
                size_length = ebml.VINT_LENGTHS[size_first_byte]
                if not size_length:
                    raise MkvError(
                        "invalid element size: first byte 0x00 announces more than 8 bytes",
                        buffer_position + size_position,
                    )
                body_start = size_position + size_length
                if body_start > available:
                    break
                if id_length == 1:
                    element_id = first_byte
                elif id_length == 2:
                    element_id = _read_u16_at(buffer, position)[0]
                elif id_length == 4:
                    element_id = _read_u32_at(buffer, position)[0]
                else:
                    element_id = int.from_bytes(buffer[position:size_position], "big")
                # A size whose value bits are all ones is the reserved "unknown size".
                if size_length == 8:
                    size = _read_u64_at(buffer, size_position)[0] & _EIGHT_BYTE_VALUE_MASK
                    unknown_size = size == _EIGHT_BYTE_VALUE_MASK
                elif size_length == 1:
                    size = size_first_byte & _ONE_BYTE_VALUE_MASK
                    unknown_size = size == _ONE_BYTE_VALUE_MASK
                else:
                    value_mask = ebml.VALUE_MASKS[size_length]
                    size = int.from_bytes(buffer[size_position:body_start], "big") & value_mask
                    unknown_size = size == value_mask
                header_start = position
                element_start = buffer_position + position
                position = body_start

                if element_id in ended_by:
                    self._end_unknown_size_masters(element_id)
                    parent_id, _, _, parent_limit, parent_children, child_actions, ended_by, _ = (
                        open_masters[-1]
                    )
                    parent_limit -= buffer_position
                action = child_actions.get(element_id, _SKIP)

                if unknown_size:
                    self._open_unknown_size_master(element_id, element_start, action)
                    parent_id, _, _, parent_limit, parent_children, child_actions, ended_by, _ = (
                        open_masters[-1]
                    )
                    parent_limit -= buffer_position
                    cluster_timecode = self._cluster_timecode
                    action = None
                    continue
                body_end = body_start + size
                if body_end > parent_limit:
                    raise self._past_parent_end(element_id, element_start, size, body_end)
                if action == _DESCEND:
                    action = None
                    memo_recording = None
                    if element_id in _MEMOIZED_MASTERS and size <= _MEMO_MAX_ELEMENT_BYTES:
                        if body_end > available:
                            if self._holds_for_template(
                                buffer, header_start, available, element_id, body_end
                            ):
                                position = header_start
                                break
                        else:
                            element_bytes = buffer[header_start:body_end]
                            memoized_events = self._memo.pop(element_bytes, None)
                            if memoized_events is not None:
                                self._memo[element_bytes] = memoized_events  # now the newest
                                events += memoized_events
                                position = body_end
                                continue
                            if self._replay_template(buffer, header_start, body_end, element_id):
                                position = body_end
                                continue
                            memo_recording = (element_bytes, len(events))
                    if element_id == ebml.CLUSTER:
                        # Reset at the start only: a block is read inside a Cluster, so
                        # no block can see the previous Cluster's timecode.
                        cluster_timecode = self._cluster_timecode = None
                    parent_id, parent_limit = element_id, body_end
                    if element_id in _COLLECTS_CHILDREN or memo_recording is not None:
                        parent_children = {}
                    else:
                        parent_children = None
                    child_actions = _CHILD_ACTIONS.get(element_id, _NO_CHILD_ACTIONS)
                    ended_by = _NOT_ENDED_BY_ANYTHING
                    end = buffer_position + body_end
                    open_masters.append(
                        (
                            element_id,
                            element_start,
                            end,
                            end,
                            parent_children,
                            child_actions,
                            ended_by,
                            memo_recording,
                        )
                    )
                    continue
                if parent_id is None and action == _SKIP and element_id not in _TOP_LEVEL_SKIPPED:
                    raise MkvError(
                        f"unexpected {ebml.describe(element_id)} at the top level; "
                        "expected an EBML header or a Segment",
                        element_start,
                    )
                if size > self._max_element_size:
                    raise MkvError(
                        f"{ebml.describe(element_id)} of size {size} exceeds the "
                        f"limit of {self._max_element_size} bytes",
                        element_start,
                    )

            if body_end > available:
                if action == _SKIP:
                    self._skip_remaining = body_end - available
                    position = available
                else:
                    self._pending_leaf = (element_id, element_start, body_end - body_start)
                    self._bytes_needed = body_end - available
                break
            if action == _READ:
                if parent_children is not None:
                    parent_children[element_id] = buffer[body_start:body_end]
                else:
                    self._read_cluster_leaf(element_id, element_start, buffer[body_start:body_end])
                    cluster_timecode = self._cluster_timecode
            position = body_end
            action = None
            if parent_id == ebml.CLUSTER and cluster_timecode is not None:
                position = self._read_blocks(buffer, position)
                if position == _AWAITING_BLOCK:
                    return

        # What remains is a partial header or the received part of a pending leaf; the
        # position does not advance past a pending leaf until all of it has arrived.
        if position < available:
            self._unparsed.append(buffer[position:])
        self._buffer_position = buffer_position + position

    def _read_blocks(self, buffer: bytes, position: int) -> int:
        """The fast path for the bulk of a call: read the SimpleBlocks that follow one
        another from ``position`` in the Cluster open at the top of the stack, as long
        as they are laid out as KVS writes them (one-byte ID, 8-byte size, one-byte
        track number, no lacing), and return the position of the first element left to
        :meth:`_parse`. The awaited block, if any, is completed first: the rest of its
        payload is ``buffer[:position]``.

        Each block takes one struct call and none of the general path's bookkeeping,
        which is safe because a SimpleBlock in a Cluster is a leaf that neither opens a
        master nor ends an unknown-size one, and none is read past the Cluster's end, so
        the stack of open masters stays as it is. Whatever does not fit - another
        element, another size length, lacing, a block too big or running past the
        Cluster - is left where it starts for the general path, which reads it, and
        raises the same errors, as it always did. A block whose body has not all arrived
        becomes the awaited block; then the received part of its payload is kept and
        :data:`_AWAITING_BLOCK` returned. So is the start of a block header that the
        chunk cuts, which the general path would also keep, or take as a pending leaf
        and report no sooner: kept, it comes back here with the next chunk.
        """
        events = self._events
        awaited_block = self._awaited_block
        if awaited_block is None:
            buffer_position = self._buffer_position
            cluster_timecode = self._cluster_timecode
            assert cluster_timecode is not None
            cluster_end = self._open[-1][3]
        else:
            (
                _,
                block_end,
                track_number,
                timecode,
                keyframe,
                cluster_timecode,
                cluster_end,
                payload_start,
            ) = awaited_block
            unparsed = self._unparsed
            if unparsed:
                unparsed.insert(0, payload_start)
                unparsed.append(buffer[:position])
                payload = b"".join(unparsed)
                unparsed.clear()
            else:
                payload = payload_start + buffer[:position]
            events.append(_new_frame(Frame, (track_number, timecode, payload, keyframe)))
            buffer_position = block_end - position
        available = len(buffer)
        cluster_limit = cluster_end - buffer_position
        max_block_size = self._max_fast_block_size
        while True:
            if position + _KVS_BLOCK_HEADER_BYTES > available:
                if position < available and self._keeps_cut_block_header(
                    buffer, position, max_block_size, cluster_limit
                ):
                    self._awaited_block = None
                    self._bytes_needed = position + _KVS_BLOCK_HEADER_BYTES - available
                    self._buffer_position = buffer_position + position
                    return _AWAITING_BLOCK
                break
            element_id, size_field, track_vint, relative_timecode, flags = (
                _read_kvs_block_header_at(buffer, position)
            )
            size = size_field - _EIGHT_BYTE_SIZE_MARKER
            payload_start = position + _KVS_BLOCK_HEADER_BYTES
            body_end = position + _KVS_ELEMENT_HEADER_BYTES + size
            if not (
                element_id == ebml.SIMPLE_BLOCK
                and _SHORT_BLOCK_HEADER_BYTES <= size <= max_block_size
                and track_vint & _ONE_BYTE_VINT_MARKER
                and not flags & _LACING_MASK
                and body_end <= cluster_limit
            ):
                break
            if body_end > available:
                self._awaited_block = (
                    buffer_position + position,
                    buffer_position + body_end,
                    track_vint & _ONE_BYTE_VALUE_MASK,
                    cluster_timecode + relative_timecode,
                    flags & _KEYFRAME_FLAG != 0,
                    cluster_timecode,
                    cluster_end,
                    buffer[payload_start:],
                )
                self._bytes_needed = body_end - available
                return _AWAITING_BLOCK
            events.append(
                _new_frame(
                    Frame,
                    (
                        track_vint & _ONE_BYTE_VALUE_MASK,
                        cluster_timecode + relative_timecode,
                        buffer[payload_start:body_end],
                        flags & _KEYFRAME_FLAG != 0,
                    ),
                )
            )
            position = body_end
        self._awaited_block = None
        self._bytes_needed = 0
        self._buffer_position = buffer_position
        return position

    def _keeps_cut_block_header(
        self, buffer: bytes, position: int, max_block_size: int, cluster_limit: int
    ) -> bool:
        """Whether the rest of ``buffer`` from ``position``, shorter than a block header,
        starts a SimpleBlock the fast path may take, and is now kept unparsed for it."""
        if buffer[position] != ebml.SIMPLE_BLOCK:
            return False
        if position + _KVS_ELEMENT_HEADER_BYTES > len(buffer):
            # The general path would keep this partial element header too.
            keeps = (
                position + 1 == len(buffer)
                or buffer[position + 1] == _EIGHT_BYTE_SIZE_FIRST_BYTE
            )
        else:
            # The general path would take this as a SimpleBlock whose body has not all
            # arrived, with the same checks as here.
            size = _read_u64_at(buffer, position + 1)[0] - _EIGHT_BYTE_SIZE_MARKER
            body_end = position + _KVS_ELEMENT_HEADER_BYTES + size
            keeps = (
                _SHORT_BLOCK_HEADER_BYTES <= size <= max_block_size
                and body_end <= cluster_limit
            )
        if keeps:
            self._unparsed.append(buffer[position:])
            self._block_header_kept = True
        return keeps

    def _read_cluster_leaf(self, element_id: int, start: int, body: bytes) -> None:
        """A Cluster's Timecode, or a SimpleBlock the fast path left to the general one."""
        if element_id == ebml.TIMECODE:
            self._cluster_timecode = _read_uint(body, start)
            self._events.append(ClusterStart(self._cluster_timecode))
        else:
            self._emit_frames(start, body, keyframe=None)

    def _end_unknown_size_masters(self, next_element_id: int) -> None:
        while next_element_id in self._open[-1][6]:
            self._end_master(self._open.pop())

    def _open_unknown_size_master(self, element_id: int, start: int, action: int) -> None:
        if not (action == _DESCEND and element_id in _ENDED_BY):
            raise MkvError(
                f"{ebml.describe(element_id)} has unknown size; only a Segment, or a "
                "Cluster inside a Segment, may",
                start,
            )
        if element_id == ebml.CLUSTER:
            self._cluster_timecode = None
        self._open.append(
            (
                element_id,
                start,
                None,
                self._open[-1][3],
                {} if element_id in _COLLECTS_CHILDREN else None,
                _CHILD_ACTIONS.get(element_id, _NO_CHILD_ACTIONS),
                _ENDED_BY[element_id],
                None,
            )
        )

    def _past_parent_end(self, element_id: int, start: int, size: int, end: int) -> MkvError:
        parent_id, _, _, parent_limit, *_ = self._open[-1]
        assert parent_id is not None
        overrun = end - (parent_limit - self._buffer_position)
        return MkvError(
            f"{ebml.describe(element_id)} of size {size} runs {overrun} bytes past the end "
            f"of its parent {ebml.describe(parent_id)}",
            start,
        )

    def _end_master(self, master: _OpenMaster) -> None:
        element_id, start, _, _, children, _, _, memo_recording = master
        if children is None:
            return
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
                        else _read_uint(scale, start)
                    ),
                    title=_read_string(children.get(ebml.TITLE, b"")),
                )
            )
        elif element_id == ebml.TRACK_ENTRY:
            number = children.get(ebml.TRACK_NUMBER)
            if number is None:
                raise MkvError("TrackEntry without a TrackNumber", start)
            self._events.append(
                TrackEntry(
                    number=_read_uint(number, start),
                    name=_read_string(children.get(ebml.NAME, b"")),
                    codec_id=_read_string(children.get(ebml.CODEC_ID, b"")),
                )
            )
        elif element_id == ebml.BLOCK_GROUP:
            block = children.get(ebml.BLOCK)
            if block is None:
                raise MkvError("BlockGroup without a Block", start)
            # A Block is a keyframe exactly when it references no other frame.
            keyframe = ebml.REFERENCE_BLOCK not in children
            self._emit_frames(start, block, keyframe=keyframe)
        elif element_id == ebml.SIMPLE_TAG:
            binary = children.get(ebml.TAG_BINARY)
            string = children.get(ebml.TAG_STRING)
            if string is None and binary is not None:
                value = binary.hex()
            else:
                value = _read_string(string or b"")
            self._events.append(Tag(_read_string(children.get(ebml.TAG_NAME, b"")), value))
        if memo_recording is not None:
            element_bytes, first_event = memo_recording
            master_events = tuple(self._events[first_event:])
            _remember(self._memo, element_bytes, master_events)
            _remember(
                self._templates,
                (element_id, len(element_bytes)),
                _template_of(element_bytes, master_events),
            )

    def _holds_for_template(
        self, buffer: bytes, start: int, available: int, element_id: int, end: int
    ) -> bool:
        """Whether to keep the part of a memoized master received so far unparsed until
        more arrives, so that it may be looked up once whole, which it may as long as
        that delays no event: as long as the part received fits the master's template
        and ends before the first event that the template reports. An event depends only
        on the bytes before its own end, so one that a part fitting the template
        completes would be in the template, at the same place. On return True,
        ``_bytes_needed`` is how many more bytes may arrive before the first event.
        """
        template = self._templates.get((element_id, end - start))
        if template is None or self._closed:
            return False
        fixed_parts, _, first_event_end = template
        received = available - start
        if received >= first_event_end:
            return False
        for offset, part in fixed_parts:
            if offset >= received:
                break
            if not buffer.startswith(part[: received - offset], start + offset):
                return False
        self._bytes_needed = first_event_end - received
        return True

    def _replay_template(self, buffer: bytes, start: int, end: int, element_id: int) -> bool:
        """Report the events of the memoized master at ``buffer[start:end]`` from its
        template, if it has one that its bytes fit; else return False."""
        key = (element_id, end - start)
        template = self._templates.pop(key, None)
        if template is None:
            return False
        self._templates[key] = template  # now the newest
        fixed_parts, template_events, _ = template
        for offset, part in fixed_parts:
            if not buffer.startswith(part, start + offset):
                return False
        events = self._events
        for event in template_events:
            if event.__class__ is _TagValueHole:
                value = buffer[start + event.start : start + event.end]
                events.append(Tag(event.name, _read_string(value)))
            else:
                events.append(event)
        return True

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


_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


def _remember(memo: dict[_Key, _Value], key: _Key, value: _Value) -> None:
    """Add to a memo kept in least recently used order, keeping at most
    ``_MEMO_CAPACITY`` entries."""
    if len(memo) >= _MEMO_CAPACITY:
        del memo[next(iter(memo))]
    memo[key] = value


def _template_of(master: bytes, master_events: tuple[MkvEvent, ...]) -> _Template:
    """The template of a memoized master (header included) whose parse reported
    ``master_events``. It walks the element headers as :meth:`MkvStreamParser._parse`
    read them, without error, so every ID and size is valid and fits."""
    holes: list[tuple[int, int]] = []
    first_event_end: int | None = None
    # Where the value of each SimpleTag's Tag is, in the order the Tags were reported:
    # that of the SimpleTags' ends (an inner one before the one around it).
    tag_values: list[tuple[int, int] | None] = []
    element_id, position, end = _element_at(master, 0)
    # The open masters as (element_id, end, where its last TagString so far is).
    open_masters: list[tuple[int, int, tuple[int, int] | None]] = [(element_id, end, None)]
    while open_masters:
        parent_id, parent_end, last_tag_string = open_masters[-1]
        if position == parent_end:
            open_masters.pop()
            if first_event_end is None and parent_id in _COLLECTS_CHILDREN:
                first_event_end = parent_end
            if parent_id == ebml.SIMPLE_TAG:
                tag_values.append(last_tag_string)
                if last_tag_string is not None:
                    holes.append(last_tag_string)
            continue
        element_id, body_start, body_end = _element_at(master, position)
        action = _CHILD_ACTIONS.get(parent_id, _NO_CHILD_ACTIONS).get(element_id, _SKIP)
        if action == _DESCEND:
            open_masters.append((element_id, body_end, None))
            position = body_start
            continue
        if action == _SKIP:
            holes.append((body_start, body_end))
        elif element_id == ebml.TAG_STRING:
            open_masters[-1] = (parent_id, parent_end, (body_start, body_end))
        position = body_end

    fixed_parts = []
    fixed_start = 0
    for hole_start, hole_end in sorted(holes):
        if hole_start > fixed_start:
            fixed_parts.append((fixed_start, master[fixed_start:hole_start]))
        fixed_start = hole_end
    if fixed_start < len(master):
        fixed_parts.append((fixed_start, master[fixed_start:]))

    template_events: list[MkvEvent | _TagValueHole] = []
    values = iter(tag_values)
    for event in master_events:
        if event.__class__ is Tag:
            value = next(values)
            if value is not None:
                event = _TagValueHole(event.name, *value)
        template_events.append(event)
    if first_event_end is None:
        first_event_end = len(master)
    return tuple(fixed_parts), tuple(template_events), first_event_end


def _element_at(data: bytes, position: int) -> tuple[int, int, int]:
    """(element_id, body_start, body_end) of the valid, known-size element at ``position``."""
    size_position = position + _ID_LENGTHS[data[position]]
    body_start = size_position + ebml.VINT_LENGTHS[data[size_position]]
    size_mask = ebml.VALUE_MASKS[body_start - size_position]
    size = int.from_bytes(data[size_position:body_start], "big") & size_mask
    return int.from_bytes(data[position:size_position], "big"), body_start, body_start + size


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
