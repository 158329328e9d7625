"""Multi-scale STFT discriminator: shapes, features, gradients to the input."""

from __future__ import annotations

import torch

from mimirate.train.discriminator import MultiScaleSTFTDiscriminator


def test_shapes_and_features() -> None:
    d = MultiScaleSTFTDiscriminator((512, 256), filters=8)
    out = d(torch.randn(2, 1, 4000))
    assert len(out.logits) == 2 and len(out.features) == 2
    for lg, feats, n_fft in zip(out.logits, out.features, (512, 256), strict=True):
        assert lg.shape[:2] == (2, 1)
        assert lg.shape[2] == 4000 // (n_fft // 4) + 1  # frames (centred STFT)
        assert len(feats) == 5  # first conv, three dilated, one 3x3
        assert all(f.shape[1] == 8 for f in feats)


def test_gradients_reach_input_and_weights() -> None:
    d = MultiScaleSTFTDiscriminator((256,), filters=4)
    x = torch.randn(1, 1, 2000, requires_grad=True)
    out = d(x)
    out.logits[0].mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in d.parameters())


def test_distinguishes_inputs() -> None:
    torch.manual_seed(0)
    d = MultiScaleSTFTDiscriminator((256,), filters=4)
    a = d(torch.randn(1, 1, 2000)).logits[0]
    b = d(torch.zeros(1, 1, 2000)).logits[0]
    assert not torch.allclose(a, b)
