"""The senders' voice activity detector: frame level against a tracked noise floor."""

from __future__ import annotations

import numpy as np
import pytest

from mimirate.errors import ConfigError
from mimirate.ratecontrol.vad import (
    FLOOR_WINDOW_FRAMES,
    LOUD_DBFS,
    SILENCE_DBFS,
    VoiceActivity,
    frame_dbfs,
)


def level(dbfs: float, n: int = 1920, seed: int = 0) -> np.ndarray:
    """White noise at ``dbfs`` RMS (the sample RMS is exact)."""
    x = np.random.default_rng(seed).standard_normal(n)
    return (x / np.sqrt(np.mean(x * x)) * 10 ** (dbfs / 20)).astype(np.float32)


def run(vad: VoiceActivity, levels: list[float]) -> list[bool]:
    return [vad.push(level(d, seed=i)) for i, d in enumerate(levels)]


def test_frame_level_in_dbfs() -> None:
    assert frame_dbfs(level(-20.0)) == pytest.approx(-20.0, abs=1e-3)
    assert frame_dbfs(np.zeros(1920)) == -200.0
    with pytest.raises(ConfigError):
        frame_dbfs(np.zeros(0))


def test_pauses_above_the_absolute_threshold_are_silence() -> None:
    # LibriSpeech-like: pauses at -45 dBFS (above -50), speech at -25. Silence is declared
    # after three quiet frames following speech (the hangover), speech on its first frame.
    vad = VoiceActivity(hangover=3)
    pattern = [-45.0] * 3 + [-25.0] * 2 + [-45.0] * 6 + [-26.0]
    assert run(vad, pattern) == [False] * 3 + [True] * 2 + [True] * 3 + [False] * 3 + [True]
    assert vad.noise_floor_dbfs == pytest.approx(-50.0)  # the window is not full yet


def test_floor_follows_the_quietest_frame_of_the_window() -> None:
    vad = VoiceActivity(hangover=0)
    # A quiet room (-58 dBFS) and soft speech at -44: under the loud level and barely above
    # the absolute one, yet 14 dB over the floor, so it is speech.
    quiet_room = run(vad, [-58.0] * FLOOR_WINDOW_FRAMES + [-44.0, -58.0])
    assert quiet_room[-2:] == [True, False]
    assert vad.noise_floor_dbfs == pytest.approx(-58.0, abs=1e-3)
    # A noisy room: the floor rises to -42 once the quiet frames leave the window, and
    # -44 is no longer speech.
    noisy = run(vad, [-42.0] * FLOOR_WINDOW_FRAMES + [-44.0])
    assert vad.noise_floor_dbfs == pytest.approx(-44.0, abs=1e-3) and noisy[-1] is False


def test_loud_steady_sound_is_never_silence_and_digital_silence_always_is() -> None:
    vad = VoiceActivity(hangover=0)
    steady = run(vad, [LOUD_DBFS + 3] * (2 * FLOOR_WINDOW_FRAMES))
    assert all(steady)  # its floor is itself, but it is loud
    vad = VoiceActivity(hangover=0, margin_db=0.0)
    assert run(vad, [SILENCE_DBFS - 1, -200.0]) == [False, False]
    with pytest.raises(ConfigError):
        VoiceActivity(hangover=-1)
    with pytest.raises(ConfigError):
        VoiceActivity(silence_dbfs=-30.0, loud_dbfs=-40.0)
