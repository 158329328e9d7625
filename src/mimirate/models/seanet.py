"""SEANet convolutional encoder and decoder (audio <-> 25 Hz latent), causal and streaming.

Layer order and indices follow the released Mimi checkpoint (``encoder.model.N``),
so its keys load unchanged. Weight norm is not used: the released weights have it
folded into plain convolutions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mimirate.config import SEANetConfig
from mimirate.models.conv import StreamingConv1d, StreamingConvTranspose1d
from mimirate.models.streaming import StreamingSequential


def _elu() -> nn.ELU:
    """ELU in place, for inputs that are a layer's fresh output and read by nothing else.

    Offline, SEANet's activations are tens of MB per layer: writing them in place saves a
    buffer each, whose pages would otherwise be faulted in afresh (autograd saves ELU's
    output for its backward, so training is unaffected).
    """
    return nn.ELU(alpha=1.0, inplace=True)


class SEANetResnetBlock(nn.Module):
    """``x + conv1x1(ELU(conv_k(ELU(x))))``, the inner width reduced by ``compress``."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = StreamingSequential(
            nn.ELU(alpha=1.0),  # not in place: x is the residual
            StreamingConv1d(dim, hidden, kernel_size, dilation=dilation),
            _elu(),
            StreamingConv1d(hidden, dim, 1),
        )

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        return self.block.init_state(batch_size)

    def forward(self, x: torch.Tensor, state: tuple[Any, ...] | None = None) -> torch.Tensor:
        """``[B, dim, T] -> [B, dim, T]``."""
        # In place on the block's fresh output: one buffer fewer per block.
        return self.block(x, state).add_(x)


def _resblocks(cfg: SEANetConfig, dim: int) -> list[nn.Module]:
    return [
        SEANetResnetBlock(dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress)
        for j in range(cfg.n_residual_layers)
    ]


def _check(cfg: SEANetConfig) -> None:
    if not cfg.true_skip:
        # Every released Mimi model uses identity skips; a conv skip would add keys.
        raise NotImplementedError("only true_skip=True SEANet blocks are implemented")


class SEANetEncoder(nn.Module):
    """Audio ``[B, channels, N]`` to latent ``[B, dimension, N / hop]``.

    Downsamples by ``cfg.ratios`` in reverse order (the ratios are given in decoder order).
    """

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        _check(cfg)
        self.hop_length = cfg.hop_length
        mult = 1
        layers: list[nn.Module] = [
            StreamingConv1d(cfg.channels, cfg.n_filters, cfg.kernel_size),
        ]
        for ratio in reversed(cfg.ratios):
            width = mult * cfg.n_filters
            layers += _resblocks(cfg, width)
            layers += [
                _elu(),
                StreamingConv1d(width, 2 * width, 2 * ratio, stride=ratio),
            ]
            mult *= 2
        layers += [
            _elu(),
            StreamingConv1d(mult * cfg.n_filters, cfg.dimension, cfg.last_kernel_size),
        ]
        self.model = StreamingSequential(*layers)

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        return self.model.init_state(batch_size)

    def forward(self, x: torch.Tensor, state: tuple[Any, ...] | None = None) -> torch.Tensor:
        """``[B, channels, n * hop] -> [B, dimension, n]``."""
        return self.model(x, state)


class SEANetDecoder(nn.Module):
    """Latent ``[B, dimension, T]`` to audio ``[B, channels, T * hop]``."""

    def __init__(self, cfg: SEANetConfig) -> None:
        super().__init__()
        _check(cfg)
        self.hop_length = cfg.hop_length
        mult = 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [
            StreamingConv1d(cfg.dimension, mult * cfg.n_filters, cfg.kernel_size),
        ]
        for ratio in cfg.ratios:
            width = mult * cfg.n_filters
            layers += [
                _elu(),
                StreamingConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio),
            ]
            layers += _resblocks(cfg, width // 2)
            mult //= 2
        layers += [
            _elu(),
            StreamingConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size),
        ]
        self.model = StreamingSequential(*layers)

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        return self.model.init_state(batch_size)

    def forward(self, z: torch.Tensor, state: tuple[Any, ...] | None = None) -> torch.Tensor:
        """``[B, dimension, n] -> [B, channels, n * hop]``."""
        return self.model(z, state)
