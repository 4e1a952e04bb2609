import doctest
import math
import struct
import warnings
import wave

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipeline.audio
from pipeline.audio import (
    MULAW_SILENCE,
    SILENCE_FLOOR_DBFS,
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    level_dbfs,
    mulaw_to_pcm16,
    pcm16_to_mulaw,
    read_wav,
    write_wav_mulaw,
    write_wav_pcm16,
)

# A scalar G.711 μ-law reference, written from the algorithm (16-bit linear input,
# bias 0x84, clip 32635) independently of the vectorized tables under test: find the
# segment by comparing the biased magnitude against each segment's upper end.
_SEGMENT_ENDS = (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF)


def reference_encode(sample: int) -> int:
    if sample < 0:
        magnitude, mask = -sample, 0x7F
    else:
        magnitude, mask = sample, 0xFF
    magnitude = min(magnitude, 32635) + 0x84
    segment = next(i for i, end in enumerate(_SEGMENT_ENDS) if magnitude <= end)
    mantissa = (magnitude >> (segment + 3)) & 0x0F
    return ((segment << 4) | mantissa) ^ mask


def reference_decode(code: int) -> int:
    code = ~code & 0xFF
    segment = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + 0x84) << segment) - 0x84
    return -magnitude if code & 0x80 else magnitude


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def samples_of(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


def test_encode_is_bit_exact_against_the_reference_for_every_16_bit_sample():
    every_sample = np.arange(-32768, 32768, dtype="<i2").tobytes()
    expected = bytes(reference_encode(s) for s in range(-32768, 32768))
    assert pcm16_to_mulaw(every_sample) == expected


def test_decode_is_bit_exact_against_the_reference_for_every_code():
    expected = [reference_decode(code) for code in range(256)]
    assert samples_of(mulaw_to_pcm16(bytes(range(256)))) == expected


@pytest.mark.parametrize(
    ("sample", "code"),
    [(0, 0xFF), (-1, 0x7F), (1, 0xFF), (32767, 0x80), (32635, 0x80), (-32768, 0x00), (-32635, 0)],
)
def test_known_codes(sample, code):
    assert pcm16_to_mulaw(pcm(sample)) == bytes([code])


def test_every_code_except_negative_zero_survives_decode_then_encode():
    codes = bytes(c for c in range(256) if c != 0x7F)
    assert pcm16_to_mulaw(mulaw_to_pcm16(codes)) == codes
    assert pcm16_to_mulaw(mulaw_to_pcm16(b"\x7f")) == b"\xff"


def test_silence_code_decodes_to_zero():
    assert mulaw_to_pcm16(bytes([MULAW_SILENCE])) == pcm(0)


@given(st.lists(st.integers(-32768, 32767), max_size=400))
def test_encode_matches_the_reference_for_any_sample_sequence(samples):
    assert pcm16_to_mulaw(pcm(*samples)) == bytes(reference_encode(s) for s in samples)


@given(st.integers(-32768, 32767))
def test_round_trip_error_is_within_half_a_quantization_step(sample):
    decoded = samples_of(mulaw_to_pcm16(pcm16_to_mulaw(pcm(sample))))[0]
    clipped = max(-32635, min(32635, sample))
    # In segment e the step is 2**(e+3) and the biased magnitude is at least 2**(e+7),
    # so half a step is at most (|x| + 0x84) / 32.
    assert abs(decoded - clipped) <= (abs(clipped) + 0x84) / 32
    assert decoded == 0 or (decoded > 0) == (sample > 0)


@given(st.integers(1, 32767))
def test_encoding_is_symmetric_in_sign(sample):
    positive = pcm16_to_mulaw(pcm(sample))[0]
    assert pcm16_to_mulaw(pcm(-sample))[0] == positive ^ 0x80


def test_odd_length_pcm_is_rejected():
    with pytest.raises(ValueError, match="even number of bytes"):
        pcm16_to_mulaw(b"\x00\x01\x02")


def test_empty_input():
    assert pcm16_to_mulaw(b"") == b""
    assert mulaw_to_pcm16(b"") == b""


def test_level_of_silence_and_of_nothing_is_the_floor():
    assert level_dbfs(b"") == SILENCE_FLOOR_DBFS
    assert level_dbfs(bytes(320)) == SILENCE_FLOOR_DBFS


def test_level_of_a_sine():
    t = np.arange(8000) / 8000
    for amplitude, expected in ((32767, -3.01), (3277, -23.01)):
        tone = np.round(amplitude * np.sin(2 * math.pi * 1000 * t)).astype("<i2").tobytes()
        assert level_dbfs(tone) == pytest.approx(expected, abs=0.01)


def test_level_of_the_quietest_signal_is_above_the_floor():
    assert SILENCE_FLOOR_DBFS < level_dbfs(pcm(1, 0, 0, 0)) < -90


def test_mulaw_wav_has_format_tag_7_a_fact_chunk_and_the_bytes_unchanged(tmp_path):
    path = tmp_path / "call.wav"
    data = bytes(range(256)) * 3
    write_wav_mulaw(path, data)
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    fmt_size, tag, channels, rate, byte_rate, align, bits, cb_size = struct.unpack_from(
        "<IHHIIHHH", raw, 16
    )
    assert (fmt_size, tag, channels, rate, byte_rate, align, bits, cb_size) == (
        18, 7, 1, 8000, 8000, 1, 8, 0
    )
    assert raw[38:42] == b"fact" and struct.unpack_from("<II", raw, 42) == (4, len(data))
    assert raw[50:54] == b"data" and struct.unpack_from("<I", raw, 54)[0] == len(data)
    assert raw[58:] == data
    assert read_wav(path) == (WAVE_FORMAT_MULAW, 8000, 1, 8, data)


def test_odd_length_chunk_is_padded_to_an_even_offset(tmp_path):
    path = tmp_path / "odd.wav"
    write_wav_mulaw(path, b"\x01\x02\x03", sample_rate=16000)
    raw = path.read_bytes()
    assert len(raw) % 2 == 0 and raw.endswith(b"\x01\x02\x03\x00")
    assert read_wav(path) == (WAVE_FORMAT_MULAW, 16000, 1, 8, b"\x01\x02\x03")


def test_pcm_wav_is_readable_by_the_stdlib(tmp_path):
    path = tmp_path / "pcm.wav"
    audio = pcm(0, 1, -1, 32767, -32768)
    write_wav_pcm16(path, audio)
    with wave.open(str(path)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 8000)
        assert reader.readframes(reader.getnframes()) == audio
    assert read_wav(path) == (WAVE_FORMAT_PCM, 8000, 1, 16, audio)


def test_read_wav_rejects_what_is_not_a_wav(tmp_path):
    path = tmp_path / "not.wav"
    path.write_bytes(b"RIFF\x04\x00\x00\x00AVI ")
    with pytest.raises(ValueError, match="not a RIFF/WAVE"):
        read_wav(path)
    path.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(ValueError, match="lacks a fmt or data"):
        read_wav(path)


def test_docstring_examples_run():
    assert doctest.testmod(pipeline.audio).failed == 0


def test_codec_matches_python_s_audioop_where_g711_leaves_no_choice():
    """audioop (stdlib until Python 3.13) is Sun's g711.c: it shifts the sample to 14
    bits before taking the magnitude, so a negative sample that is not a multiple of 4
    rounds away from zero, into the next code at some step boundaries. This codec takes
    the magnitude first, so ``x`` and ``-x`` always share a code; everywhere else the two
    are identical, and decoding is identical for all 256 codes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    samples = np.arange(-32768, 32768, dtype="<i2")
    ours = np.frombuffer(pcm16_to_mulaw(samples.tobytes()), dtype=np.uint8)
    sun = np.frombuffer(audioop.lin2ulaw(samples.tobytes(), 2), dtype=np.uint8)
    differ = ours != sun
    assert not differ[(samples >= 0) | (samples % 4 == 0)].any()
    # Where they differ, audioop picked the neighbouring (larger-magnitude) code.
    assert (ours[differ].astype(int) - sun[differ].astype(int) == 1).all()
    every_code = bytes(range(256))
    assert mulaw_to_pcm16(every_code) == audioop.ulaw2lin(every_code, 2)
