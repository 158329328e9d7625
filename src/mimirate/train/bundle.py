"""The data bundle: the training audio, compact enough to travel with the working tree.

A GPU machine receives at most 64 MiB of working tree, so the training subset goes along
as Ogg Opus (libsndfile's encoder, through soundfile: nothing to install) at a high
bitrate, one file per utterance, plus ``manifest.json`` (source, rate, length, SHA-256 of
every file). Opus only codes 8/12/16/24/48 kHz, so each clip is stored at the lowest of
those at or above its source rate (LibriSpeech stays at 16 kHz, LJSpeech goes to 24 kHz);
:func:`read_bundle` resamples to the model rate.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from mimirate.audio import read_audio, resample
from mimirate.errors import AudioError, ConfigError
from mimirate.fileio import atomic_write_bytes
from mimirate.train.data import Clip, check_not_dev, list_audio_files

BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)

#: Folders bundled by default. fsdd (spoken digits at 8 kHz, ten words) is left out: it
#: adds little variety per byte; pass --folders to change the choice.
DEFAULT_FOLDERS = ("librispeech-train-clean-100", "ljspeech-excerpt")

#: libsndfile maps a compression level in [0, 1] to the Opus bitrate; 0.95 gives about
#: 19 kbit/s on 16 kHz speech (waveform SNR ~20 dB), well above what the codec reproduces.
DEFAULT_COMPRESSION_LEVEL = 0.95


@dataclass(frozen=True)
class BundleEntry:
    path: str  # relative to the bundle folder
    source: str  # relative to the speech root it was built from
    sample_rate: int  # rate stored in the Opus file
    num_samples: int  # at sample_rate
    sha256: str


@dataclass(frozen=True)
class BundleManifest:
    version: int
    codec: str
    compression_level: float
    created: str
    entries: tuple[BundleEntry, ...]

    @property
    def seconds(self) -> float:
        return sum(e.num_samples / e.sample_rate for e in self.entries)

    def to_json(self) -> str:
        d = asdict(self)
        d["entries"] = [asdict(e) for e in self.entries]
        return json.dumps(d, indent=1) + "\n"

    @classmethod
    def parse(cls, text: str) -> BundleManifest:
        try:
            d = json.loads(text)
            entries = tuple(BundleEntry(**e) for e in d.pop("entries"))
            manifest = cls(entries=entries, **d)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"bundle manifest is malformed ({e}); rebuild the bundle") from None
        if manifest.version != BUNDLE_VERSION:
            raise ConfigError(f"bundle version {manifest.version} is not {BUNDLE_VERSION}")
        return manifest


def _opus_rate(rate: int) -> int:
    return next((r for r in OPUS_RATES if r >= rate), OPUS_RATES[-1])


def encode_opus(samples: np.ndarray, rate: int, compression_level: float) -> bytes:
    """Ogg Opus bytes of mono ``[N]`` float32 at an Opus rate."""
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="OGG", subtype="OPUS", compression_level=compression_level)
    return buf.getvalue()


def build_bundle(
    speech_root: Path,
    out_dir: Path,
    folders: Sequence[str] = DEFAULT_FOLDERS,
    compression_level: float = DEFAULT_COMPRESSION_LEVEL,
    progress: bool = True,
) -> BundleManifest:
    """Encode the audio of ``speech_root/<folder>`` into ``out_dir`` and write the manifest.

    The manifest is written last, so a bundle without one is incomplete. Raises
    :class:`ConfigError` for the evaluation folder or a missing folder.
    """
    root = Path(speech_root)
    out = Path(out_dir)
    dirs = []
    for name in folders:
        d = root / name
        check_not_dev(d)
        if not d.is_dir():
            raise ConfigError(f"{d} not found; choose folders of {root}")
        dirs.append(d)
    entries = []
    for f in tqdm(list_audio_files(dirs), desc="bundling", unit="file", disable=not progress):
        info = sf.info(str(f))
        rate = _opus_rate(int(info.samplerate))
        samples = read_audio(f, rate).samples
        data = encode_opus(samples, rate, compression_level)
        rel = f.relative_to(root).with_suffix(".opus")
        atomic_write_bytes(out / rel, data)
        digest = hashlib.sha256(data).hexdigest()
        entries.append(BundleEntry(str(rel), str(f.relative_to(root)), rate, len(samples), digest))
    manifest = BundleManifest(
        version=BUNDLE_VERSION,
        codec="ogg-opus (libsndfile)",
        compression_level=compression_level,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        entries=tuple(entries),
    )
    atomic_write_bytes(out / MANIFEST, manifest.to_json().encode())
    return manifest


def read_manifest(bundle_dir: Path) -> BundleManifest:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{path} not found; build the bundle with `mimirate train bundle --out {bundle_dir}`"
        )
    return BundleManifest.parse(path.read_text())


def bundle_bytes(bundle_dir: Path) -> int:
    """Bytes the bundle occupies on disk (audio files + manifest)."""
    manifest = read_manifest(bundle_dir)
    files = [Path(bundle_dir) / e.path for e in manifest.entries] + [Path(bundle_dir) / MANIFEST]
    return sum(f.stat().st_size for f in files)


def read_bundle(bundle_dir: Path, sample_rate: int, progress: bool = True) -> list[Clip]:
    """Decode every clip of a bundle to mono float32 at ``sample_rate``.

    Each file is checked against its SHA-256 and length in the manifest; a mismatch
    raises :class:`AudioError` telling to rebuild or re-fetch the bundle.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    clips = []
    for e in tqdm(manifest.entries, desc="reading bundle", unit="file", disable=not progress):
        check_not_dev(Path(e.source))
        path = bundle_dir / e.path
        try:
            data = path.read_bytes()
        except OSError as err:
            raise AudioError(f"{path}: cannot read ({err}); re-fetch the bundle") from None
        if hashlib.sha256(data).hexdigest() != e.sha256:
            raise AudioError(f"{path}: checksum differs from the manifest; rebuild the bundle")
        audio = read_audio(data, e.sample_rate)
        if audio.source_rate != e.sample_rate or len(audio.samples) != e.num_samples:
            raise AudioError(
                f"{path}: decoded {len(audio.samples)} samples at {audio.source_rate} Hz, "
                f"the manifest says {e.num_samples} at {e.sample_rate} Hz; rebuild the bundle"
            )
        clips.append(Clip(e.source, resample(audio.samples, e.sample_rate, sample_rate)))
    return clips
