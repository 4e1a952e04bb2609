"""Synthetic call audio: two distinguishable voices that take turns.

Each track gets a voiced signal (a pitch with harmonics, syllable-rate envelope) while
its side is talking and a low noise floor otherwise, so the two tracks differ, levels
show talk time, and μ-law coding is exercised over a realistic dynamic range.
"""

from __future__ import annotations

import numpy as np

from pipeline.records import Track

TURN_SECONDS = 2.5
PITCH_HZ = {Track.CUSTOMER: 190.0, Track.AGENT: 120.0}


def synthesize_track(track: Track, seconds: float, seed: int, sample_rate: int = 8000) -> bytes:
    """PCM16LE of one side of a call; deterministic for a given seed."""
    rng = np.random.default_rng([seed, int(track)])
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    pitch = PITCH_HZ[track] * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6.28)))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28)))
    turn = (np.floor(t / TURN_SECONDS).astype(int) % 2) == int(track)
    signal = np.where(turn, 6000 * voiced * syllables, 0.0) + rng.normal(0, 40, n)
    return np.clip(signal, -32768, 32767).astype("<i2").tobytes()
