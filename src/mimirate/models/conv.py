"""Causal 1-d convolutions that stream: plain, transposed, and Mimi's resamplers.

Attribute nesting (``.conv.conv``, ``.convtr.convtr``) mirrors the released Mimi
checkpoint, so its keys load unchanged (e.g. ``encoder.model.0.conv.conv.weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimirate.models import kernels
from mimirate.models.streaming import param_like

#: Off the CPU, transposed convs on at most this many input steps (streaming) take the
#: GEMM path and longer inputs PyTorch's own kernel. On the CPU the GEMM path is faster
#: at every length (measured 1.1-1.8x on the decoder's layers at 4 s chunks, more on
#: short ones), so it always takes it.
GEMM_MAX_STEPS = 32


class _Holder(nn.Module):
    """Holds one layer under ``name``: an extra level of nesting the checkpoint keys have."""

    def __init__(self, name: str, layer: nn.Module) -> None:
        super().__init__()
        self.add_module(name, layer)


@dataclass
class ConvState:
    """The input tail a causal conv needs from the past.

    Attributes:
        previous: ``[B, C_in, effective_kernel - stride]`` last input samples seen.
        started: whether any input was seen (``replicate`` padding copies the first sample).
    """

    previous: torch.Tensor
    started: bool = False


class StreamingConv1d(nn.Module):
    """Causal Conv1d: left padding of ``effective_kernel - stride``, carried across chunks.

    Each chunk's length must be a multiple of ``stride``; a chunk of ``n * stride``
    samples gives ``n`` outputs. ``pad_mode`` is ``constant`` (zeros before the
    stream) or ``replicate`` (the first sample repeated, as Mimi's downsample does).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        self.pad_mode = pad_mode
        self.conv = _Holder(
            "conv",
            nn.Conv1d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                dilation=dilation,
                groups=groups,
                bias=bias,
            ),
        )
        self.stride = stride
        self.padding = (kernel_size - 1) * dilation + 1 - stride

    @property
    def layer(self) -> nn.Conv1d:
        return self.conv.conv

    def init_state(self, batch_size: int) -> ConvState:
        p = param_like(self)
        previous = torch.zeros(
            batch_size, self.layer.in_channels, self.padding, device=p.device, dtype=p.dtype
        )
        return ConvState(previous)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        return kernels.conv1d(
            x, layer.weight, layer.bias, self.stride, layer.dilation[0], layer.groups
        )

    def forward(self, x: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """``[B, C_in, n * stride] -> [B, C_out, n]``; updates ``state`` in place."""
        if x.shape[-1] % self.stride:
            raise ValueError(f"chunk length {x.shape[-1]} is not a multiple of {self.stride}")
        if state is None:
            state = self.init_state(x.shape[0])
        pad = self.padding
        if pad == 0:
            return self._conv(x)
        if self.pad_mode == "replicate" and not state.started:
            state.previous.copy_(x[..., :1].detach().expand_as(state.previous))
        state.started = True
        x = torch.cat([state.previous, x], dim=-1)
        y = self._conv(x)
        state.previous.copy_(x[..., -pad:].detach())
        return y


@dataclass
class ConvTransposeState:
    """``partial``: ``[B, C_out, kernel - stride]`` overlap owed to the next chunk (no bias)."""

    partial: torch.Tensor


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d: the overlapping tail of each chunk is carried to the next.

    ``[B, C_in, n] -> [B, C_out, n * stride]``. Offline (a fresh state) this equals the
    full transposed conv with its last ``kernel - stride`` samples trimmed.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.convtr = _Holder(
            "convtr",
            nn.ConvTranspose1d(
                in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias
            ),
        )
        self.stride = stride
        self.overlap = kernel_size - stride

    @property
    def layer(self) -> nn.ConvTranspose1d:
        return self.convtr.convtr

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Lay the weight out weight-major in memory (same values, same shape, no copy
        kept): ``[C_in, C_out, K]`` becomes a view of a contiguous ``[C_out * K, C_in]``.

        A streaming step multiplies it by 1-16 input steps, and BLAS streams a weight
        that is the transposed operand 2-4x faster than the row-major one ``x @ W`` it
        gets otherwise (the decoder's first layer, 34 MB for ``mimi``: 2.7 -> 0.85 ms in
        a streaming step on this project's CPU, see :mod:`mimirate.models.kernels`). Only for the
        layers :meth:`_half_overlap` computes; a codec on the CPU calls it once.
        """
        layer = self.layer
        if layer.groups != 1 or self.overlap != self.stride or self._weight_major():
            return
        c_in, c_out, kernel = layer.weight.shape
        major = layer.weight.reshape(c_in, c_out * kernel).t().contiguous()
        layer.weight.data = major.t().view(c_in, c_out, kernel)

    def _weight_major(self) -> bool:
        w = self.layer.weight
        return w.stride() == (1, w.shape[2] * w.shape[0], w.shape[0])

    def init_state(self, batch_size: int) -> ConvTransposeState:
        p = param_like(self)
        partial = torch.zeros(
            batch_size, self.layer.out_channels, self.overlap, device=p.device, dtype=p.dtype
        )
        return ConvTransposeState(partial)

    def forward(self, x: torch.Tensor, state: ConvTransposeState | None = None) -> torch.Tensor:
        """``[B, C_in, n] -> [B, C_out, n * stride]``; updates ``state`` in place."""
        layer = self.layer
        gemm = x.device.type == "cpu" or x.shape[-1] <= GEMM_MAX_STEPS
        if layer.groups == 1 and self.overlap == self.stride and gemm:
            if state is None:
                state = self.init_state(x.shape[0])
            return self._half_overlap(x, state)
        y = layer(x)
        overlap = self.overlap
        if overlap == 0:
            return y
        if state is None:
            state = self.init_state(x.shape[0])
        y[..., :overlap] += state.partial
        tail = y[..., -overlap:].detach()
        bias = self.layer.bias
        # The bias is added once per output sample: the next chunk adds it to these again.
        state.partial.copy_(tail if bias is None else tail - bias[:, None])
        return y[..., :-overlap]

    def _half_overlap(self, x: torch.Tensor, state: ConvTransposeState) -> torch.Tensor:
        # kernel == 2 * stride (every Mimi upsampling layer): input step t writes its first
        # half-kernel into output block t and its second into block t + 1. One GEMM and one
        # shifted add do it; PyTorch's CPU transposed conv takes a slow path on these shapes
        # (about 4x slower at the decoder's first layer) when the input is short.
        w = self.layer.weight  # [C_in, C_out, 2 * stride]
        c_in, c_out, kernel = w.shape
        B, _, T = x.shape
        S = self.stride
        flat = w.reshape(c_in, c_out * kernel)  # a view: weight-major once folded
        if flat.t().is_contiguous() and kernels.small_columns(x, B * T):
            # Weight-major product (see fold_for_inference); its result read as time-major.
            # The steps' rows contiguous, so BLAS sees a transposed operand (as in
            # kernels.linear: the same values as a contiguous [C_in, steps] take a slower path).
            cols = x.transpose(1, 2).reshape(B * T, c_in).contiguous()
            z = torch.mm(flat.t(), cols.t()).t()  # [B * T, C_out * K], a view
        else:
            # Time-major product, so that the copy into [B, C_out, T, S] moves runs of S
            # contiguous values (channel-major, it moved single values: 2x slower offline).
            rows = x.transpose(1, 2).reshape(B * T, c_in)
            if flat.t().is_contiguous():
                z = kernels.dense(rows, flat.t()).view(B, T, c_out * kernel)
            else:
                z = torch.matmul(rows, flat).view(B, T, c_out * kernel)
        z = z.view(B, T, c_out, 2, S).permute(0, 2, 1, 3, 4)  # [B, C_out, T, 2, S]
        first, second = z[:, :, :, 0], z[:, :, :, 1]
        head = first[:, :, :1] + state.partial[:, :, None]
        if z.requires_grad:
            out = torch.cat([head, first[:, :, 1:] + second[:, :, :-1]], dim=2)
        else:
            # One pass writes each output block: its first half-kernel plus the block
            # before's second (separate copy and add passes cost 2x offline).
            out = z.new_empty(B, c_out, T, S)
            torch.add(first[:, :, 1:], second[:, :, :-1], out=out[:, :, 1:])
            out[:, :, :1] = head
        state.partial.copy_(second[:, :, -1].detach())
        if self.layer.bias is not None:
            out.add_(self.layer.bias[:, None, None])  # out is fresh; autograd allows it
        return out.view(B, c_out, T * S)


class ConvDownsample1d(nn.Module):
    """Learnt causal downsampling by ``stride`` (kernel ``2 * stride``, no bias).

    Pads with the stream's first sample (``replicate``), as Mimi was trained.
    """

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.conv = StreamingConv1d(
            dimension, dimension, 2 * stride, stride, bias=False, pad_mode="replicate"
        )

    def init_state(self, batch_size: int) -> ConvState:
        return self.conv.init_state(batch_size)

    def forward(self, x: torch.Tensor, state: ConvState | None = None) -> torch.Tensor:
        """``[B, D, n * stride] -> [B, D, n]``."""
        return self.conv(x, state)


class ConvTrUpsample1d(nn.Module):
    """Learnt causal upsampling by ``stride``: a depthwise transposed conv, no bias.

    Depthwise (``groups = dimension``) is a quirk of the original implementation that
    the released weights depend on; it is kept on purpose.
    """

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.convtr = StreamingConvTranspose1d(
            dimension, dimension, 2 * stride, stride, groups=dimension, bias=False
        )

    def init_state(self, batch_size: int) -> ConvTransposeState:
        return self.convtr.init_state(batch_size)

    def forward(self, x: torch.Tensor, state: ConvTransposeState | None = None) -> torch.Tensor:
        """``[B, D, n] -> [B, D, n * stride]``."""
        return self.convtr(x, state)
