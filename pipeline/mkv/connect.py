"""Writes fragments laid out the way Amazon Connect's live media streaming writes them.

No public capture of a Connect stream exists, so tests and the emulators build one from
what AWS documents and public dumps show: two PCM tracks named from the customer's side,
CodecID ``A_AAC`` although the payload is 16-bit little-endian PCM, ~1 KiB SimpleBlocks of
both tracks interleaved by time, and the contact's tags (ContactId, ..., Events) each in
its own Tags element *after* the Cluster. The AWS_KINESISVIDEO_* tags are the KVS
service's, not the producer's, so they are not written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from pipeline.mkv.writer import BlockSpec, TagGroup, TrackSpec, write_fragment

CUSTOMER_TRACK_NAME: Final = "AUDIO_FROM_CUSTOMER"
AGENT_TRACK_NAME: Final = "AUDIO_TO_CUSTOMER"
#: What Connect declares; the payload is PCM all the same (trust Name and MimeType).
CONNECT_CODEC_ID: Final = "A_AAC"
_BYTES_PER_SAMPLE: Final = 2


def write_connect_fragment(
    *,
    contact_id: str,
    instance_id: str,
    timecode_ms: int,
    customer_pcm: bytes,
    agent_pcm: bytes,
    sample_rate: int = 8000,
    block_bytes: int = 1024,
    customer_track_number: int = 1,
    agent_track_number: int = 2,
    customer_track_name: str = CUSTOMER_TRACK_NAME,
    events_tag: str = "[]",
    extra_tags_before_cluster: Sequence[TagGroup] = (),
    unknown_size_cluster: bool = False,
) -> bytes:
    """One Connect fragment whose Cluster starts at ``timecode_ms`` (epoch ms).

    Each track's PCM16LE is cut into blocks of at most ``block_bytes`` (whole samples);
    a block's relative timecode is its first sample's offset in ms, rounded down. Older
    Connect streams name the customer track ``Track_audio/L16``: pass it as
    ``customer_track_name``. Raises ``ValueError`` for PCM of an odd length, fewer than
    two ``block_bytes``, equal track numbers, or audio longer than a Cluster can address
    (32.767 s).
    """
    if customer_track_number == agent_track_number:
        raise ValueError(f"both tracks have number {customer_track_number}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive: {sample_rate}")
    block_size = block_bytes - block_bytes % _BYTES_PER_SAMPLE
    if block_size < _BYTES_PER_SAMPLE:
        raise ValueError(f"block_bytes must hold at least one sample: {block_bytes}")
    customer_blocks = _blocks(customer_track_number, customer_pcm, block_size, sample_rate)
    agent_blocks = _blocks(agent_track_number, agent_pcm, block_size, sample_rate)
    # sorted() is stable, so at equal timecodes the customer's block comes first.
    blocks = sorted(
        customer_blocks + agent_blocks, key=lambda block: block.relative_timecode
    )
    tags_after_cluster = [
        [("ContactId", contact_id)],
        [("InstanceId", instance_id)],
        [("MimeType", f"audio/L16;rate={sample_rate};channels=1;")],
        [(CUSTOMER_TRACK_NAME, str(customer_track_number))],
        [(AGENT_TRACK_NAME, str(agent_track_number))],
        [("Events", events_tag)],
    ]
    return write_fragment(
        tracks=[
            TrackSpec(customer_track_number, customer_track_name, CONNECT_CODEC_ID),
            TrackSpec(agent_track_number, AGENT_TRACK_NAME, CONNECT_CODEC_ID),
        ],
        cluster_timecode=timecode_ms,
        blocks=blocks,
        tags_before_cluster=extra_tags_before_cluster,
        tags_after_cluster=tags_after_cluster,
        unknown_size_cluster=unknown_size_cluster,
    )


def _blocks(track_number: int, pcm: bytes, block_size: int, sample_rate: int) -> list[BlockSpec]:
    if len(pcm) % _BYTES_PER_SAMPLE:
        raise ValueError(
            f"track {track_number}: PCM16 of {len(pcm)} bytes is not a whole number of samples"
        )
    return [
        BlockSpec(
            track_number=track_number,
            relative_timecode=offset // _BYTES_PER_SAMPLE * 1000 // sample_rate,
            payload=pcm[offset : offset + block_size],
        )
        for offset in range(0, len(pcm), block_size)
    ]
