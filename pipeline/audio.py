"""G.711 μ-law codec, signal level, and WAV files for 8 kHz telephone audio.

The codec is the 16-bit form of G.711 μ-law (bias 0x84, clip 32635, eight segments):
magnitudes are encoded symmetrically, so ``x`` and ``-x`` differ only in the sign bit.
Both directions are table look-ups built once at import, which keeps a 20 ms frame at a
single numpy indexing call.

>>> pcm16_to_mulaw((0).to_bytes(2, "little", signed=True))
b'\\xff'
>>> int.from_bytes(mulaw_to_pcm16(b"\\x80"), "little", signed=True)
32124
"""

from __future__ import annotations

import math
import os
import struct
from typing import NamedTuple

import numpy as np

MULAW_BIAS = 0x84
MULAW_CLIP = 32635
#: The μ-law code of a zero sample; used to pad a frame with silence.
MULAW_SILENCE = 0xFF

#: What ``level_dbfs`` reports for digital silence instead of -inf, so levels stay
#: plottable and comparable (16-bit audio cannot go below about -98 dBFS anyway).
SILENCE_FLOOR_DBFS = -120.0
#: 0 dBFS is a full-scale square wave of a 16-bit signal.
_FULL_SCALE = 32768.0

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_MULAW = 7


def _build_encode_table() -> np.ndarray:
    """μ-law code for every 16-bit sample, indexed by the sample's unsigned bit pattern."""
    samples = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)
    sign = np.where(samples < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(samples), MULAW_CLIP) + MULAW_BIAS
    # magnitude is in [0x84, 0x7FFF]: the position of its top set bit (7..14) is the
    # segment plus 7, read from a table over the top eight bits.
    top_bit = np.array([value.bit_length() - 1 for value in range(256)], dtype=np.int32)
    exponent = top_bit[magnitude >> 7]
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _build_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS
    return np.where(codes & 0x80, -magnitude, magnitude).astype("<i2")


_ENCODE_TABLE = _build_encode_table()
_DECODE_TABLE = _build_decode_table()


def _pcm16_samples(pcm: bytes) -> np.ndarray:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2")


def pcm16_to_mulaw(pcm: bytes) -> bytes:
    """Encode PCM16LE samples as G.711 μ-law, one byte per sample."""
    return _ENCODE_TABLE[_pcm16_samples(pcm).view("<u2")].tobytes()


def mulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 μ-law bytes to PCM16LE samples."""
    return _DECODE_TABLE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def level_dbfs(pcm: bytes) -> float:
    """RMS level of PCM16LE audio in dBFS, or ``SILENCE_FLOOR_DBFS`` for silence or no audio.

    >>> level_dbfs(b"")
    -120.0
    >>> round(level_dbfs(struct.pack("<4h", 16384, -16384, 16384, -16384)), 2)
    -6.02
    """
    samples = _pcm16_samples(pcm).astype(np.float64)
    if samples.size == 0:
        return SILENCE_FLOOR_DBFS
    rms = math.sqrt(float(np.mean(samples * samples)))
    if rms == 0.0:
        return SILENCE_FLOOR_DBFS
    return max(SILENCE_FLOOR_DBFS, 20.0 * math.log10(rms / _FULL_SCALE))


class WavContents(NamedTuple):
    format_tag: int
    sample_rate: int
    channels: int
    bits_per_sample: int
    data: bytes


def write_wav_pcm16(path: str | os.PathLike[str], pcm: bytes, sample_rate: int = 8000) -> None:
    """Write mono PCM16LE audio as a canonical PCM WAV file."""
    _pcm16_samples(pcm)
    _write_wav(path, WAVE_FORMAT_PCM, sample_rate, 16, pcm)


def write_wav_mulaw(path: str | os.PathLike[str], mulaw: bytes, sample_rate: int = 8000) -> None:
    """Write mono μ-law bytes unchanged as a WAV file with format tag 7 (WAVE_FORMAT_MULAW).

    The stdlib ``wave`` module writes PCM only, hence the hand-built header: a non-PCM
    format needs the 18-byte ``fmt`` chunk (with ``cbSize``) and a ``fact`` chunk holding
    the sample count.
    """
    _write_wav(path, WAVE_FORMAT_MULAW, sample_rate, 8, mulaw)


def _write_wav(
    path: str | os.PathLike[str], format_tag: int, sample_rate: int, bits: int, data: bytes
) -> None:
    channels = 1
    block_align = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH", format_tag, channels, sample_rate, sample_rate * block_align, block_align, bits
    )
    chunks = []
    if format_tag == WAVE_FORMAT_PCM:
        chunks.append(_chunk(b"fmt ", fmt))
    else:
        chunks.append(_chunk(b"fmt ", fmt + struct.pack("<H", 0)))
        chunks.append(_chunk(b"fact", struct.pack("<I", len(data) // block_align)))
    chunks.append(_chunk(b"data", data))
    body = b"WAVE" + b"".join(chunks)
    with open(path, "wb") as out:
        out.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def _chunk(chunk_id: bytes, payload: bytes) -> bytes:
    # RIFF chunks start on even offsets; the pad byte is not counted in the chunk size.
    pad = b"\x00" if len(payload) % 2 else b""
    return chunk_id + struct.pack("<I", len(payload)) + payload + pad


def read_wav(path: str | os.PathLike[str]) -> WavContents:
    """Read the format and the ``data`` chunk of a WAV file of any format tag."""
    with open(path, "rb") as source:
        raw = source.read()
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    data: bytes | None = None
    offset = 12
    while offset + 8 <= len(raw):
        chunk_id = raw[offset : offset + 4]
        (size,) = struct.unpack_from("<I", raw, offset + 4)
        payload = raw[offset + 8 : offset + 8 + size]
        if len(payload) < size:
            raise ValueError(f"WAV chunk {chunk_id!r} is truncated")
        if chunk_id == b"fmt ":
            if size < 16:
                raise ValueError("WAV fmt chunk is shorter than 16 bytes")
            format_tag, channels, sample_rate, _, _, bits = struct.unpack_from("<HHIIHH", payload)
            fmt = (format_tag, sample_rate, channels, bits)
        elif chunk_id == b"data":
            data = payload
        offset += 8 + size + (size % 2)
    if fmt is None or data is None:
        raise ValueError("WAV file lacks a fmt or data chunk")
    return WavContents(*fmt, data)
