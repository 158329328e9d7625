"""Voice activity for discontinuous transmission: frame energy with a hangover.

A frame is silent when its RMS is under a threshold (``SILENCE_DBFS``, the one the
content-adaptive allocator's silence mode uses). A sender that stops on the first quiet
frame clips the soft ends of words (final fricatives and plosive releases often fall
under the threshold for a frame or two), so the detector keeps calling frames speech for
``hangover`` frames after the last loud one: silence is declared only after that many
quiet frames in a row. Energy is what a 12.5 Hz frame can afford to look at; the codec's
own frames are 80 ms, long enough that breath and background noise above -50 dBFS count
as activity, which is the safe side for DTX (a missed pause costs bits, a false one
costs speech).
"""

from __future__ import annotations

import numpy as np

from mimirate.errors import ConfigError

#: Frame energy under which a frame is silent, relative to full scale.
SILENCE_DBFS = -50.0
#: Quiet frames still sent after speech (240 ms at 12.5 Hz).
HANGOVER_FRAMES = 3


def frame_dbfs(frame: np.ndarray) -> float:
    """RMS level of one frame in dB relative to full scale (-200 for digital silence)."""
    x = np.asarray(frame, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ConfigError("an empty frame has no level")
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * float(np.log10(max(rms, 1e-10)))


class VoiceActivity:
    """Streaming detector: one frame of audio in, speech (True) or silence (False) out.

    Args:
        threshold_dbfs: frames at or above this level are speech.
        hangover: quiet frames after speech that still count as speech.
    """

    def __init__(
        self, threshold_dbfs: float = SILENCE_DBFS, hangover: int = HANGOVER_FRAMES
    ) -> None:
        if hangover < 0:
            raise ConfigError(f"hangover must be >= 0 frames, got {hangover}")
        self.threshold_dbfs = threshold_dbfs
        self.hangover = hangover
        # Quiet frames seen since the last loud one; starts "long ago": a stream that
        # opens in silence sends nothing until someone speaks.
        self._quiet_run = hangover + 1

    def push(self, frame: np.ndarray) -> bool:
        """Whether this frame is sent as speech."""
        if frame_dbfs(frame) >= self.threshold_dbfs:
            self._quiet_run = 0
            return True
        self._quiet_run += 1
        return self._quiet_run <= self.hangover
