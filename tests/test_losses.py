"""Reconstruction and adversarial losses: known values, zero at equality, gradients."""

from __future__ import annotations

import pytest
import torch

from mimirate.train.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    energy_ratio,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    mel_distance,
    mel_filterbank,
    si_snr,
)


def test_mel_filterbank_shape_and_coverage() -> None:
    fb = mel_filterbank(1024, 80, 24_000)
    assert fb.shape == (80, 513)
    assert float(fb.max()) <= 1.0 + 1e-6
    assert bool((fb.sum(dim=1) > 0).all())  # no empty band
    # Centres increase with the band index.
    centres = fb.argmax(dim=1)
    assert bool((centres[1:] >= centres[:-1]).all())


def test_mel_loss_zero_for_identical_and_grows_with_error() -> None:
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2, 1, 4800, generator=g)
    loss = MultiScaleMelLoss(24_000)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    small = float(loss(x + 0.001 * torch.randn(x.shape, generator=g), x))
    large = float(loss(x + 0.05 * torch.randn(x.shape, generator=g), x))
    assert 0 < small < large
    y = torch.zeros_like(x, requires_grad=True)
    loss(y + 0.01, x).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_stft_loss_zero_for_identical_and_grows_with_error() -> None:
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2, 1, 4800, generator=g)
    loss = MultiResolutionSTFTLoss()
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    small = float(loss(x + 0.001 * torch.randn(x.shape, generator=g), x))
    large = float(loss(x + 0.05 * torch.randn(x.shape, generator=g), x))
    assert 0 < small < large
    # Two tones 40 Hz apart, within one mel band of the 2048-point scale: apart here.
    t = torch.arange(24_000) / 24_000
    a, b = (0.1 * torch.sin(2 * torch.pi * f * t)[None, None] for f in (3000.0, 3040.0))
    assert float(loss(b, a)) > 1.0
    y = torch.zeros_like(x, requires_grad=True)
    loss(y + 0.01, x).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_mel_distance_per_item() -> None:
    x = 0.1 * torch.randn(3, 1, 4800, generator=torch.Generator().manual_seed(1))
    d = mel_distance(x, x, 24_000)
    assert d.shape == (3,) and float(d.abs().max()) < 1e-6
    assert float(mel_distance(0.5 * x, x, 24_000).mean()) == pytest.approx(
        0.30103, rel=1e-3
    )  # magnitude mel: -6 dB


def test_hinge_and_lsgan_values() -> None:
    real = [torch.tensor([2.0, 0.5])]
    fake = [torch.tensor([-2.0, 0.0])]
    # relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; relu(1-2)=0, relu(1+0)=1 -> 0.5
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(0.75)
    assert float(hinge_generator_loss(fake)) == pytest.approx((3.0 + 1.0) / 2)
    assert float(lsgan_discriminator_loss(real, fake)) == pytest.approx(0.625 + 2.0)
    assert float(lsgan_generator_loss(fake)) == pytest.approx((9.0 + 1.0) / 2)


def test_feature_matching_is_relative() -> None:
    r = [[torch.ones(2, 3), 100 * torch.ones(4)]]
    assert float(feature_matching_loss(r, r)) == 0.0
    f = [[1.5 * torch.ones(2, 3), 150 * torch.ones(4)]]
    # Both layers are 50% off: scale does not matter.
    assert float(feature_matching_loss(r, f)) == pytest.approx(0.5)


def test_si_snr_and_energy_ratio() -> None:
    x = torch.randn(2, 1, 1000, generator=torch.Generator().manual_seed(2))
    assert bool((si_snr(3 * x, x) > 80).all())
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert float(si_snr(noisy, x).mean()) == pytest.approx(20.0, abs=1.0)
    assert energy_ratio(2 * x, x) == pytest.approx(4.0, rel=1e-5)
