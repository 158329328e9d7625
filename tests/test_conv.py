"""Causal streaming convolutions: causality and chunked == offline for random chunkings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mimirate.models.conv import (
    ConvDownsample1d,
    ConvTrUpsample1d,
    StreamingConv1d,
    StreamingConvTranspose1d,
)


def _chunks(total_steps: int, rng: np.random.Generator) -> list[int]:
    sizes = []
    while total_steps > 0:
        n = int(rng.integers(1, 5))
        n = min(n, total_steps)
        sizes.append(n)
        total_steps -= n
    return sizes


def _stream(layer, x: torch.Tensor, unit: int, rng: np.random.Generator) -> torch.Tensor:
    state = layer.init_state(x.shape[0])
    outs, pos = [], 0
    for n in _chunks(x.shape[-1] // unit, rng):
        outs.append(layer(x[..., pos : pos + n * unit], state))
        pos += n * unit
    return torch.cat(outs, dim=-1)


CONV_CASES = [(1, 1, 1), (3, 1, 1), (3, 1, 2), (7, 1, 1), (4, 2, 1), (10, 5, 1), (16, 8, 1)]


@pytest.mark.parametrize(("kernel", "stride", "dilation"), CONV_CASES)
@pytest.mark.parametrize("pad_mode", ["constant", "replicate"])
def test_conv_chunked_equals_offline_and_causal(kernel, stride, dilation, pad_mode, rng) -> None:
    torch.manual_seed(0)
    conv = StreamingConv1d(3, 5, kernel, stride, dilation=dilation, pad_mode=pad_mode)
    x = torch.randn(2, 3, 24 * stride)
    with torch.no_grad():
        full = conv(x)
        assert full.shape == (2, 5, 24)
        assert torch.allclose(_stream(conv, x, stride, rng), full, atol=1e-6)
        assert torch.allclose(conv(x[..., : 10 * stride]), full[..., :10], atol=1e-6)


def test_conv_offline_is_left_padded_conv() -> None:
    torch.manual_seed(0)
    conv = StreamingConv1d(2, 2, 5, 1, dilation=2)
    x = torch.randn(1, 2, 30)
    with torch.no_grad():
        ref = F.conv1d(F.pad(x, (8, 0)), conv.layer.weight, conv.layer.bias, dilation=2)
        assert torch.allclose(conv(x), ref, atol=1e-6)


def test_replicate_pads_with_the_first_sample() -> None:
    torch.manual_seed(0)
    conv = StreamingConv1d(1, 1, 4, 2, bias=False, pad_mode="replicate")
    x = torch.randn(1, 1, 8)
    with torch.no_grad():
        ref = F.conv1d(F.pad(x, (2, 0), mode="replicate"), conv.layer.weight, stride=2)
        assert torch.allclose(conv(x), ref, atol=1e-6)


def test_conv_rejects_partial_stride() -> None:
    conv = StreamingConv1d(1, 1, 4, 2)
    with pytest.raises(ValueError, match="multiple of 2"):
        conv(torch.zeros(1, 1, 5))


@pytest.mark.parametrize(("kernel", "stride"), [(1, 1), (2, 1), (4, 2), (8, 4), (12, 6), (10, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_convtr_chunked_equals_offline_and_causal(kernel, stride, bias, rng) -> None:
    torch.manual_seed(0)
    convtr = StreamingConvTranspose1d(4, 3, kernel, stride, bias=bias)
    x = torch.randn(2, 4, 20)
    with torch.no_grad():
        full = convtr(x)
        assert full.shape == (2, 3, 20 * stride)
        ref = F.conv_transpose1d(x, convtr.layer.weight, convtr.layer.bias, stride)
        assert torch.allclose(full, ref[..., : 20 * stride], atol=1e-6)
        assert torch.allclose(_stream(convtr, x, 1, rng), full, atol=1e-5)
        assert torch.allclose(convtr(x[..., :7]), full[..., : 7 * stride], atol=1e-6)


@pytest.mark.parametrize(("kernel", "stride"), [(4, 2), (16, 8), (10, 5), (3, 1)])
def test_convtr_folded_weight_major_keeps_values_and_outputs(kernel, stride, rng) -> None:
    torch.manual_seed(0)
    convtr = StreamingConvTranspose1d(6, 5, kernel, stride)
    x = torch.randn(2, 6, 12)
    with torch.no_grad():
        before = convtr.layer.weight.clone()
        full = convtr(x)
        streamed = _stream(convtr, x, 1, rng)
        convtr.fold_for_inference()
        convtr.fold_for_inference()  # idempotent
        w = convtr.layer.weight
        assert w.shape == before.shape and torch.equal(w, before)
        half = kernel == 2 * stride  # only the layers the GEMM path computes change layout
        assert convtr._weight_major() is half
        if half:
            assert w.reshape(6, 5 * kernel).t().is_contiguous()  # a view, no copy kept
        # Few steps (the weight-major product) and many (time-major), chunked and whole.
        assert torch.allclose(convtr(x), full, atol=1e-6)
        assert torch.allclose(_stream(convtr, x, 1, rng), streamed, atol=1e-5)
        assert torch.allclose(convtr(x[..., :3]), full[..., : 3 * stride], atol=1e-6)


def test_resamplers_shapes_groups_and_streaming(rng) -> None:
    torch.manual_seed(0)
    down, up = ConvDownsample1d(2, 6), ConvTrUpsample1d(2, 6)
    assert down.conv.layer.weight.shape == (6, 6, 4) and down.conv.layer.bias is None
    # The depthwise quirk: one filter per channel.
    assert up.convtr.layer.weight.shape == (6, 1, 4) and up.convtr.layer.groups == 6
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        y = down(x)
        z = up(y)
        assert y.shape == (1, 6, 8) and z.shape == (1, 6, 16)
        assert torch.allclose(_stream(down, x, 2, rng), y, atol=1e-6)
        assert torch.allclose(_stream(up, y, 1, rng), z, atol=1e-6)
