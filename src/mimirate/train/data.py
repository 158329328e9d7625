"""Training audio: which files, read at 24 kHz, and random augmented crops.

The evaluation folder (``librispeech-test-other-dev``) is never read here: every path
goes through :func:`check_not_dev`, so no option or bundle can slip it into training.

A :class:`CropSampler` draws batches ``[B, 1, N]`` from in-memory clips with a NumPy
``Generator`` whose state is plain JSON, so a resumed run draws the same batches.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mimirate.audio import prepare, read_audio
from mimirate.errors import AudioError, ConfigError

#: The folder kept for quality figures; training never reads it.
DEV_FOLDER = "librispeech-test-other-dev"

#: Extensions read as audio when a folder is searched.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")


@dataclass(frozen=True)
class Clip:
    """One training utterance: mono float32 samples at the training rate."""

    name: str  # where it came from, relative to the speech root (or "espeak/<i>")
    samples: np.ndarray  # [N] float32


def check_not_dev(path: Path) -> None:
    """Raise :class:`ConfigError` when ``path`` lies in (or is) the evaluation folder."""
    if DEV_FOLDER in Path(path).parts:
        raise ConfigError(
            f"{path} is in {DEV_FOLDER}, which is kept for evaluation; "
            "train on the other folders of ../shared/data/speech"
        )


def training_folders(speech_root: Path) -> list[Path]:
    """Every folder of ``speech_root`` except the evaluation one, sorted by name."""
    root = Path(speech_root)
    if not root.is_dir():
        raise ConfigError(f"speech data folder {root} not found; pass the folder that holds it")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != DEV_FOLDER)
    if not folders:
        raise ConfigError(f"{root} has no training folders (only {DEV_FOLDER} is excluded)")
    return folders


def list_audio_files(folders: Sequence[Path]) -> list[Path]:
    """Audio files under ``folders`` (recursive, sorted); refuses the evaluation folder."""
    files: list[Path] = []
    for folder in folders:
        check_not_dev(Path(folder))
        files.extend(
            p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
        )
    for f in files:
        check_not_dev(f)
    return sorted(files)


def load_clips(
    files: Sequence[Path], sample_rate: int, root: Path | None = None, progress: bool = True
) -> list[Clip]:
    """Read ``files`` as mono float32 at ``sample_rate`` (soxr resampling)."""
    clips = []
    for f in tqdm(files, desc="reading audio", unit="file", disable=not progress):
        check_not_dev(f)
        name = str(f.relative_to(root)) if root is not None else str(f)
        clips.append(Clip(name, read_audio(f, sample_rate).samples))
    return clips


# Words for synthetic sentences: common English words so espeak-ng's phonemes cover the
# language; the content does not matter, only the variety of sounds and voices.
_WORD_TEXT = """
the quick brown fox jumps over lazy dog she sells sea shells by shore peter piper picked
peck of pickled peppers how much wood would woodchuck chuck if could thirty three
thieves thought they thrilled throne throughout thursday yellow leather red lorry unique
new york morning evening river mountain window kitchen garden music voice quiet loud
measure vision judge church ship thin this azure zoo hello world number seven eight nine
ten question answer because before after almost always never maybe every little bit
helps weather
"""
_WORDS = tuple(_WORD_TEXT.split())


def synthetic_speech(count: int, sample_rate: int, seed: int) -> list[Clip]:
    """``count`` sentences spoken by espeak-ng with random voices, speeds and pitches.

    Robotic but phonetically varied; useful to pad a small corpus. Raises
    :class:`ConfigError` when espeak-ng is not installed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("espeak-ng is not installed; install it (apt) or pass --espeak 0")
    rng = random.Random(seed)
    voices = ("en", "en-us", "en-gb", "en-gb-scotland", "en-029", "en+f3", "en+m3", "en-us+f2")
    clips = []
    for i in tqdm(range(count), desc="espeak-ng", unit="clip"):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16)))
        cmd = [
            exe,
            "--stdout",
            "-v",
            rng.choice(voices),
            "-s",
            str(rng.randint(120, 200)),
            "-p",
            str(rng.randint(20, 80)),
            words,
        ]
        wav = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
        try:
            samples = read_audio(wav, sample_rate).samples
        except AudioError as e:
            raise ConfigError(f"espeak-ng gave unreadable audio ({e})") from None
        clips.append(Clip(f"espeak/{i}", samples))
    return clips


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random gain and the mild additive noise applied to every crop."""

    gain_db: tuple[float, float] = (-12.0, 6.0)
    noise_probability: float = 0.3
    noise_snr_db: tuple[float, float] = (25.0, 50.0)


class CropSampler:
    """Random crops of ``segment`` samples from ``clips``, with gain and noise.

    Clips are picked with probability proportional to their length, so every second of
    speech is equally likely. Shorter clips are zero-padded at a random offset. The
    generator's state is JSON (:meth:`state` / :meth:`set_state`) for exact resuming.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        segment: int,
        batch_size: int,
        seed: int,
        augmentation: Augmentation | None = None,
    ) -> None:
        if not clips:
            raise ConfigError("no training audio: the corpus is empty")
        if segment < 1 or batch_size < 1:
            raise ConfigError("segment length and batch size must be positive")
        self.clips = list(clips)
        self.segment = segment
        self.batch_size = batch_size
        self.augmentation = augmentation or Augmentation()
        lengths = np.array([len(c.samples) for c in self.clips], dtype=np.float64)
        self._weights = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict[str, Any]:
        """The generator's state as JSON-ready data."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def crop(self) -> np.ndarray:
        """One augmented crop ``[segment]`` float32."""
        rng = self.rng
        clip = self.clips[int(rng.choice(len(self.clips), p=self._weights))].samples
        out = np.zeros(self.segment, dtype=np.float32)
        if len(clip) >= self.segment:
            start = int(rng.integers(0, len(clip) - self.segment + 1))
            out[:] = clip[start : start + self.segment]
        else:
            offset = int(rng.integers(0, self.segment - len(clip) + 1))
            out[offset : offset + len(clip)] = clip
        aug = self.augmentation
        out *= np.float32(10 ** (rng.uniform(*aug.gain_db) / 20))
        if rng.random() < aug.noise_probability:
            power = float(np.mean(out**2)) + 1e-10
            snr = rng.uniform(*aug.noise_snr_db)
            noise = rng.standard_normal(self.segment).astype(np.float32)
            out += noise * np.float32(np.sqrt(power / 10 ** (snr / 10)))
        # Keep the target representable: a codec is not asked to reproduce clipping.
        peak = float(np.max(np.abs(out)))
        if peak > 0.99:
            out *= np.float32(0.99 / peak)
        return out

    def batch(self) -> np.ndarray:
        """``[B, 1, segment]`` float32."""
        return np.stack([self.crop() for _ in range(self.batch_size)])[:, None, :]


def split_holdout(clips: Sequence[Clip], count: int, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Split off ``count`` clips (chosen with ``seed``) for validation: (train, holdout)."""
    if count <= 0:
        return list(clips), []
    if count >= len(clips):
        raise ConfigError(f"cannot hold out {count} of {len(clips)} clips for validation")
    order = np.random.default_rng(seed).permutation(len(clips))
    held = set(order[:count].tolist())
    train = [c for i, c in enumerate(clips) if i not in held]
    holdout = [c for i, c in enumerate(clips) if i in held]
    return train, holdout


def clip_from_samples(name: str, samples: np.ndarray, rate: int, target_rate: int) -> Clip:
    """Validate and resample raw samples into a :class:`Clip`."""
    return Clip(name, prepare(samples, rate, target_rate).samples)
