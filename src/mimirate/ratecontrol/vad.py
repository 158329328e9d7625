"""Voice activity for discontinuous transmission: frame level against a tracked noise floor.

Real recordings are rarely digitally silent between words: LibriSpeech's pauses sit at
-43 to -49 dBFS, its speech at -25 (medians per 80 ms frame, measured), so a fixed
threshold either never fires or clips soft speech. The detector follows the noise floor
the way minimum-statistics estimators do: the floor is the quietest frame of the last
``window`` frames (3 s: speech always has pauses or dips within that), and a frame is
speech when it stands ``margin_db`` above it. Two absolute bounds keep it safe: under
``SILENCE_DBFS`` (-50) a frame is always silent, and at ``LOUD_DBFS`` (-35) or above it is
always speech (a loud steady sound, music, a tone, is not silence whatever its floor).
Until a window has been seen, the floor is taken no higher than ``SILENCE_DBFS``.

A sender that stops on the first quiet frame clips the soft ends of words (final
fricatives and releases fall under the threshold for a frame or two), so silence is
declared only after ``hangover`` quiet frames in a row. Missing a pause costs bits;
a false one costs speech: every choice here leans to the first.
"""

from __future__ import annotations

import collections

import numpy as np

from mimirate.errors import ConfigError

#: Frames quieter than this (dB relative to full scale) are silent.
SILENCE_DBFS = -50.0
#: Frames at least this loud are speech whatever the noise floor.
LOUD_DBFS = -35.0
#: How far above the noise floor a frame must be to be speech.
MARGIN_DB = 12.0
#: Frames over which the noise floor is the minimum level (3.04 s at 12.5 Hz).
FLOOR_WINDOW_FRAMES = 38
#: Quiet frames still sent after speech (240 ms at 12.5 Hz).
HANGOVER_FRAMES = 3


def frame_dbfs(frame: np.ndarray) -> float:
    """RMS level of one frame in dB relative to full scale (-200 for digital silence)."""
    x = np.asarray(frame, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ConfigError("an empty frame has no level")
    return float(levels_dbfs(x, x.size)[0])


def levels_dbfs(audio: np.ndarray, frame_size: int) -> np.ndarray:
    """``[T]`` RMS levels (dBFS) of the frames of ``[N]`` audio, the last one zero-padded
    as the encoder pads it (-200 for digital silence)."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n = -(-x.size // frame_size)
    frames = np.zeros(n * frame_size)
    frames[: x.size] = x
    rms = np.sqrt(np.mean(frames.reshape(n, frame_size) ** 2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


class VoiceActivity:
    """Streaming detector: one frame of audio in, speech (True) or silence (False) out.

    Args:
        margin_db: level above the noise floor that makes a frame speech.
        window: frames whose quietest one is the noise floor.
        hangover: quiet frames after speech that still count as speech.
        silence_dbfs / loud_dbfs: always silent below, always speech at or above.
    """

    def __init__(
        self,
        margin_db: float = MARGIN_DB,
        window: int = FLOOR_WINDOW_FRAMES,
        hangover: int = HANGOVER_FRAMES,
        silence_dbfs: float = SILENCE_DBFS,
        loud_dbfs: float = LOUD_DBFS,
    ) -> None:
        if hangover < 0 or window < 1:
            raise ConfigError(f"need hangover >= 0 and window >= 1, got {hangover}, {window}")
        if not silence_dbfs <= loud_dbfs:
            raise ConfigError("the silence level must not be above the loud level")
        self.margin_db = margin_db
        self.hangover = hangover
        self.silence_dbfs = silence_dbfs
        self.loud_dbfs = loud_dbfs
        self._levels: collections.deque[float] = collections.deque(maxlen=window)
        # Quiet frames seen since the last speech frame; starts "long ago": a stream that
        # opens in silence sends nothing until someone speaks.
        self._quiet_run = hangover + 1

    @property
    def noise_floor_dbfs(self) -> float:
        """The current floor estimate (``silence_dbfs`` before the first frame)."""
        floor = min(self._levels, default=self.silence_dbfs)
        if len(self._levels) < (self._levels.maxlen or 0):
            floor = min(floor, self.silence_dbfs)
        return floor

    def push(self, frame: np.ndarray) -> bool:
        """Whether this frame is sent as speech."""
        level = frame_dbfs(frame)
        self._levels.append(level)
        loud = level >= self.loud_dbfs or (
            level >= self.silence_dbfs and level >= self.noise_floor_dbfs + self.margin_db
        )
        if loud:
            self._quiet_run = 0
            return True
        self._quiet_run += 1
        return self._quiet_run <= self.hangover
