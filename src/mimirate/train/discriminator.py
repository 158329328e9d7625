"""Multi-scale STFT discriminator (the kind EnCodec and Mimi train against).

Each scale looks at the complex STFT (real and imaginary parts as two channels) with a
small 2-D conv stack: dilated in time, strided in frequency. Seeing phase, not just
magnitude, is what lets it penalise the metallic artefacts a mel loss ignores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm


@dataclass(frozen=True)
class DiscriminatorOutput:
    """``logits``: one ``[B, 1, frames, bins]`` map per scale; ``features``: per scale, the
    activations of every hidden layer (for feature matching)."""

    logits: list[torch.Tensor]
    features: list[list[torch.Tensor]]


class STFTDiscriminator(nn.Module):
    """One scale: STFT of ``n_fft`` points, hop ``n_fft // 4``, then 2-D convs."""

    def __init__(self, n_fft: int, filters: int = 32, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.n_fft = n_fft
        self.hop = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [weight_norm(nn.Conv2d(2, filters, (3, 9), padding=(1, 4)))]
        for d in dilations:
            layers.append(
                weight_norm(
                    nn.Conv2d(
                        filters, filters, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)
                    )
                )
            )
        layers.append(weight_norm(nn.Conv2d(filters, filters, (3, 3), padding=(1, 1))))
        self.layers = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv2d(filters, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``audio [B, 1, N]`` to logits ``[B, 1, frames, bins']`` and hidden activations."""
        x = audio.reshape(audio.shape[0], -1).float()
        spec = torch.stft(
            x, self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )
        # [B, bins, frames] complex -> [B, 2, frames, bins]: time first, as the convs expect.
        z = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)
        features = []
        for layer in self.layers:
            z = F.leaky_relu(layer(z), 0.2)
            features.append(z)
        return self.out(z), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """STFT discriminators at several window sizes (default 2048, 1024, 512 points)."""

    def __init__(self, n_ffts: tuple[int, ...] = (2048, 1024, 512), filters: int = 32) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, filters) for n in n_ffts)

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        logits, features = [], []
        for d in self.discriminators:
            lg, ft = d(audio)
            logits.append(lg)
            features.append(ft)
        return DiscriminatorOutput(logits, features)
