"""Training losses: multi-scale mel and linear-STFT reconstruction, adversarial (hinge / LSGAN),
feature matching.

All take audio or discriminator outputs as tensors and return scalar tensors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Floor under mel energies before the log (about -100 dB re full scale).
LOG_FLOOR = 1e-5


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular HTK-mel filters ``[n_mels, n_fft // 2 + 1]``, each of unit peak.

    Written here because no library in our stack provides one: torchaudio has no build
    for our torch pin and librosa would pull numba in for twenty lines.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(
        torch.linspace(
            float(_hz_to_mel(torch.tensor(f_min))),
            float(_hz_to_mel(torch.tensor(f_max))),
            n_mels + 2,
            dtype=torch.float64,
        )
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class MelSpectrogram(nn.Module):
    """Magnitude mel spectrogram ``[B, n_mels, frames]`` of audio ``[B, 1, N]`` or ``[B, N]``."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer(
            "filters", mel_filterbank(n_fft, n_mels, sample_rate), persistent=False
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio.reshape(-1, audio.shape[-1]).float()
        spec = torch.stft(
            x, self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        ).abs()
        return torch.matmul(self.filters, spec)


class MultiScaleMelLoss(nn.Module):
    """Sum over window sizes ``2**5 .. 2**11`` of L1 on log-mel plus L1 on mel.

    Small windows judge timing (transients, pitch pulses), large ones spectral detail;
    the linear term keeps loud parts weighted, the log term quiet ones. Each scale has
    ``min(n_mels, n_fft // 8)`` bands so no band of a small window is empty.
    """

    def __init__(self, sample_rate: int, n_mels: int = 64, scales: range = range(5, 12)) -> None:
        super().__init__()
        self.mels = nn.ModuleList(
            MelSpectrogram(sample_rate, 2**i, 2**i // 4, min(n_mels, 2**i // 8)) for i in scales
        )

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = estimate.new_zeros((), dtype=torch.float32)
        for mel in self.mels:
            a, b = mel(estimate), mel(target)
            total = total + F.l1_loss(a, b)
            total = total + F.l1_loss(
                torch.log(a.clamp(min=LOG_FLOOR)), torch.log(b.clamp(min=LOG_FLOOR))
            )
        return total / len(self.mels)


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over FFT sizes of spectral convergence plus L1 on log magnitude, on the linear
    frequency scale (Parallel WaveGAN's auxiliary loss).

    The mel loss pools a 2048-point spectrum into 64 bands, 120 Hz wide at 2 kHz and wider
    above, so there it cannot see whether a voice's harmonics are resolved; 1025 linear
    bins can. Spectral convergence (``||S_y| - |S_x||_F / ||S_x||_F``) weighs the loud parts,
    the log term the quiet ones. Off in the recipe: at weight 1 over 8000 CPU steps it
    lowered ViSQOL on the dev files (``training/README.md``, "An eighth cycle").
    """

    def __init__(self, ffts: tuple[int, ...] = (512, 1024, 2048)) -> None:
        super().__init__()
        self.ffts = ffts
        for n in ffts:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = estimate.reshape(-1, estimate.shape[-1]).float()
        x = target.reshape(-1, target.shape[-1]).float()
        total = y.new_zeros(())
        for n in self.ffts:
            window = getattr(self, f"window_{n}")
            a, b = (
                torch.stft(v, n, n // 4, window=window, center=True, return_complex=True).abs()
                for v in (y, x)
            )
            total = total + torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp(min=LOG_FLOOR)
            total = total + F.l1_loss(
                torch.log(a.clamp(min=LOG_FLOOR)), torch.log(b.clamp(min=LOG_FLOOR))
            )
        return total / len(self.ffts)


def mel_distance(estimate: torch.Tensor, target: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mean absolute difference of log10-mel spectra, 80 bands, 1024-point FFT, hop 256.

    Per item of ``[B, 1, N]`` (result ``[B]``); used for validation and the quality floor.
    """
    mel = MelSpectrogram(sample_rate, 1024, 256, 80).to(estimate.device)
    a = torch.log10(mel(estimate).clamp(min=LOG_FLOOR))
    b = torch.log10(mel(target).clamp(min=LOG_FLOOR))
    return (a - b).abs().mean(dim=(1, 2))


def hinge_discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean over discriminators of ``relu(1 - D(x)) + relu(1 + D(G(z)))``."""
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def hinge_generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean over discriminators of ``relu(1 - D(G(z)))``."""
    return torch.stack([F.relu(1 - f).mean() for f in fake]).mean()


def lsgan_discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean over discriminators of ``(1 - D(x))^2 + D(G(z))^2``."""
    terms = [((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake, strict=True)]
    return torch.stack(terms).mean()


def lsgan_generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean over discriminators of ``(1 - D(G(z)))^2``."""
    return torch.stack([((1 - f) ** 2).mean() for f in fake]).mean()


def feature_matching_loss(
    real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]
) -> torch.Tensor:
    """Mean over discriminators and layers of ``|f_real - f_fake|_1 / mean |f_real|``.

    Dividing by the real features' magnitude keeps every layer's term near 1 however
    large its activations are (EnCodec's relative feature loss). ``real`` is detached.
    """
    terms = []
    for layers_r, layers_f in zip(real, fake, strict=True):
        for r, f in zip(layers_r, layers_f, strict=True):
            r = r.detach()
            terms.append(F.l1_loss(f, r) / r.abs().mean().clamp(min=1e-8))
    return torch.stack(terms).mean()


def si_snr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB per item of ``[B, ..., N]`` (result ``[B]``)."""
    e = estimate.reshape(estimate.shape[0], -1).double()
    t = target.reshape(target.shape[0], -1).double()
    e = e - e.mean(-1, keepdim=True)
    t = t - t.mean(-1, keepdim=True)
    proj = (e * t).sum(-1, keepdim=True) / (t.pow(2).sum(-1, keepdim=True) + 1e-12) * t
    noise = e - proj
    ratio = proj.pow(2).sum(-1) / (noise.pow(2).sum(-1) + 1e-12)
    return (10 * torch.log10(ratio + 1e-12)).float()


def energy_ratio(estimate: torch.Tensor, target: torch.Tensor) -> float:
    """Output-to-input energy ratio of a batch (1 is right; near 0 means a silent decoder)."""
    return float(estimate.detach().pow(2).sum() / target.pow(2).sum().clamp(min=1e-12))


__all__ = [
    "MelSpectrogram",
    "MultiScaleMelLoss",
    "energy_ratio",
    "feature_matching_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "mel_distance",
    "mel_filterbank",
    "si_snr",
]
