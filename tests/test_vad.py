"""The senders' voice activity detector: frame energy with a hangover."""

from __future__ import annotations

import numpy as np
import pytest

from mimirate.errors import ConfigError
from mimirate.ratecontrol.vad import SILENCE_DBFS, VoiceActivity, frame_dbfs


def tone(dbfs: float, n: int = 1920) -> np.ndarray:
    # A sine's RMS is its amplitude / sqrt(2).
    amplitude = np.sqrt(2) * 10 ** (dbfs / 20)
    return (amplitude * np.sin(2 * np.pi * 200 * np.arange(n) / 24_000)).astype(np.float32)


def test_frame_level_in_dbfs() -> None:
    assert frame_dbfs(tone(-20.0)) == pytest.approx(-20.0, abs=0.01)
    assert frame_dbfs(np.zeros(1920)) == -200.0
    with pytest.raises(ConfigError):
        frame_dbfs(np.zeros(0))


def test_silence_is_declared_after_the_hangover_and_speech_at_once() -> None:
    vad = VoiceActivity(hangover=3)
    loud, quiet = tone(SILENCE_DBFS + 1), tone(SILENCE_DBFS - 1)
    pattern = [quiet, loud, quiet, quiet, quiet, quiet, quiet, loud, quiet]
    # A stream opening in silence sends nothing; three quiet frames after speech still
    # go (the soft end of a word), the fourth does not; speech resumes on its first frame.
    assert [vad.push(f) for f in pattern] == [
        False, True, True, True, True, False, False, True, True,
    ]  # fmt: skip


def test_no_hangover_follows_the_threshold() -> None:
    vad = VoiceActivity(threshold_dbfs=-30.0, hangover=0)
    assert [vad.push(tone(d)) for d in (-29.0, -31.0, -29.0)] == [True, False, True]
    with pytest.raises(ConfigError):
        VoiceActivity(hangover=-1)
