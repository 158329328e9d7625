"""Classical speech codecs run for real, as baselines: Opus and Codec 2.

Each baseline encodes to a real file with the reference command-line tools
(opus-tools ``opusenc``/``opusdec``; Debian ``codec2``'s ``c2enc``/``c2dec``),
reports that file's size, and decodes it back. The harness then treats the
decoded audio exactly as it treats Mimi's: resample, align, score.

- Opus: ``opusenc --speech --bitrate K --padding 0`` (VBR, 20 ms frames, the
  encoder's defaults otherwise) on 24 kHz 16-bit input; the size is the whole Ogg
  file (headers and the ENCODER tag included; ``--padding 0`` drops the 512 bytes
  opusenc reserves for later tag edits by default). Decoded by ``opusdec --float
  --no-dither`` at 48 kHz, so the pre-skip is removed and no random dither enters.
- Codec 2: ``c2enc MODE`` on 8 kHz 16-bit raw input, headerless ``.bit`` output
  (each frame's bits padded to whole bytes: 700C's 28 bits per 40 ms take 4 bytes,
  hence 0.8 kbit/s on disk), decoded by ``c2dec MODE`` to 8 kHz raw.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimirate.audio import resample
from mimirate.errors import AudioError, ConfigError

OPUS_BITRATES_KBPS: tuple[str, ...] = ("6", "8", "12")
CODEC2_MODES: tuple[str, ...] = ("700C", "1200", "1600", "3200")
#: Every mode the installed c2enc accepts (CODEC2_MODES is the default set).
CODEC2_ALL_MODES: tuple[str, ...] = (
    "3200", "2400", "1600", "1400", "1300", "1200", "700C", "450", "450PWB",
)  # fmt: skip

OPUS_INPUT_RATE = 24000
OPUS_OUTPUT_RATE = 48000
CODEC2_RATE = 8000

#: A tool that runs longer than this on one file is treated as hung.
TOOL_TIMEOUT_S = 300

_TOOLS = {"opus": ("opusenc", "opusdec"), "codec2": ("c2enc", "c2dec")}
_PACKAGES = {"opus": "opus-tools", "codec2": "codec2"}


@dataclass(frozen=True)
class Baseline:
    """One classical codec at one setting."""

    codec: str  # "opus" or "codec2"
    setting: str  # Opus: target kbit/s ("6"); Codec 2: mode ("700C")

    @property
    def label(self) -> str:
        return f"Opus {self.setting}k" if self.codec == "opus" else f"Codec 2 {self.setting}"

    @property
    def key(self) -> str:
        """A short name safe in file names: ``opus-6``, ``codec2-700C``."""
        return f"{self.codec}-{self.setting}"

    @property
    def input_rate(self) -> int:
        return OPUS_INPUT_RATE if self.codec == "opus" else CODEC2_RATE


@dataclass(frozen=True)
class Coded:
    """What a baseline made of one signal."""

    samples: np.ndarray  # [M] float32 decoded audio at sample_rate
    sample_rate: int
    num_bytes: int  # size of the encoded file


def default_baselines(codecs: tuple[str, ...] = ("opus", "codec2")) -> tuple[Baseline, ...]:
    """Opus at 6, 8, 12 kbit/s and Codec 2 700C, 1200, 1600, 3200 (those asked for)."""
    out: list[Baseline] = []
    for codec in codecs:
        settings = OPUS_BITRATES_KBPS if codec == "opus" else CODEC2_MODES
        out.extend(Baseline(codec, s) for s in settings)
    return tuple(out)


def parse_baselines(spec: str) -> tuple[Baseline, ...]:
    """Parse ``"opus,codec2"`` or ``"opus:6,opus:24,codec2:1200"``; ``""`` gives none."""
    out: list[Baseline] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        codec, _, setting = item.partition(":")
        codec = codec.lower()
        if codec not in _TOOLS:
            raise ConfigError(f"unknown baseline {codec!r}; choose opus or codec2")
        if not setting:
            out.extend(default_baselines((codec,)))
            continue
        if codec == "codec2":
            setting = setting.upper()
            if setting not in CODEC2_ALL_MODES:
                raise ConfigError(
                    f"unknown Codec 2 mode {setting!r}; choose one of {', '.join(CODEC2_ALL_MODES)}"
                )
        else:
            try:
                kbps = float(setting)
            except ValueError:
                kbps = -1.0
            if not 6.0 <= kbps <= 256.0:
                raise ConfigError(f"Opus bitrate {setting!r} must be a number of kbit/s in 6..256")
        out.append(Baseline(codec, setting))
    # Keep the order given, drop repeats.
    return tuple(dict.fromkeys(out))


def require_tools(baselines: tuple[Baseline, ...]) -> None:
    """Raise :class:`ConfigError` naming the install command if a needed tool is missing."""
    for codec in dict.fromkeys(b.codec for b in baselines):
        missing = [t for t in _TOOLS[codec] if shutil.which(t) is None]
        if missing:
            raise ConfigError(
                f"the {codec} baseline needs {' and '.join(missing)}, not found on PATH; "
                f"install them with `make system-deps` (apt-get install {_PACKAGES[codec]}), "
                "or leave that baseline out (--baselines)"
            )


def _to_pcm16(samples: np.ndarray) -> bytes:
    x = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767)
    return x.astype("<i2").tobytes()


def _run(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError:
        raise ConfigError(f"{cmd[0]} not found; install it with `make system-deps`") from None
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise AudioError(f"{cmd[0]} failed (exit {e.returncode}): {' / '.join(err)}") from None
    except subprocess.TimeoutExpired:
        raise AudioError(f"{cmd[0]} ran over {TOOL_TIMEOUT_S} s on one file") from None


def run_baseline(baseline: Baseline, samples: np.ndarray, sample_rate: int) -> Coded:
    """Encode ``[N]`` float samples at ``sample_rate`` to a real file and decode it back.

    The input is resampled (soxr) to the codec's input rate first. Returns the
    decoded audio at the decoder's output rate and the encoded file's size.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1 or len(x) == 0:
        raise AudioError(f"baselines take non-empty mono [N] samples, got shape {x.shape}")
    require_tools((baseline,))
    pcm = _to_pcm16(resample(x, sample_rate, baseline.input_rate))
    with tempfile.TemporaryDirectory(prefix="mimirate-baseline-") as tmp:
        d = Path(tmp)
        (d / "in.raw").write_bytes(pcm)
        if baseline.codec == "opus":
            # --serial fixes the Ogg stream id so that the same input gives the same bytes.
            _run([
                "opusenc", "--quiet", "--speech", "--bitrate", baseline.setting,
                "--padding", "0", "--serial", "1",
                "--raw", "--raw-bits", "16", "--raw-rate", str(OPUS_INPUT_RATE),
                "--raw-chan", "1", "--raw-endianness", "0",
                str(d / "in.raw"), str(d / "coded.opus"),
            ])  # fmt: skip
            num_bytes = (d / "coded.opus").stat().st_size
            _run([
                "opusdec", "--quiet", "--float", "--no-dither", "--rate", str(OPUS_OUTPUT_RATE),
                str(d / "coded.opus"), str(d / "out.f32"),
            ])  # fmt: skip
            out = np.fromfile(d / "out.f32", dtype="<f4")
            rate = OPUS_OUTPUT_RATE
        else:
            _run(["c2enc", baseline.setting, str(d / "in.raw"), str(d / "coded.bit")])
            num_bytes = (d / "coded.bit").stat().st_size
            _run(["c2dec", baseline.setting, str(d / "coded.bit"), str(d / "out.raw")])
            out = np.fromfile(d / "out.raw", dtype="<i2").astype(np.float32) / 32768.0
            rate = CODEC2_RATE
    return Coded(np.ascontiguousarray(out, dtype=np.float32), rate, int(num_bytes))
