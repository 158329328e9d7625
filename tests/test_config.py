from __future__ import annotations

import dataclasses

import pytest

from mimirate.config import DEFAULT_MODEL, MIMI, PRESETS, MimiConfig, SEANetConfig, get_preset
from mimirate.errors import ConfigError


def test_official_geometry() -> None:
    assert MIMI.frame_size == 1920
    assert MIMI.seanet.hop_length == 960
    assert MIMI.encoder_frame_rate == 25.0
    assert MIMI.downsample_stride == 2
    assert MIMI.quantizer.bits_per_code == 11
    assert MIMI.quantizer.n_q == 32 and MIMI.quantizer.n_q_semantic == 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_the_bitrate_geometry(name: str) -> None:
    config = get_preset(name)
    assert config.name == name
    assert config.sample_rate == 24_000 and config.frame_rate == 12.5
    assert config.quantizer.n_q == 32 and config.quantizer.bins == 2048


def test_default_model_is_a_preset() -> None:
    assert DEFAULT_MODEL in PRESETS


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MIMI.sample_rate = 16_000  # type: ignore[misc]


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known presets: .*mimi"):
        get_preset("nope")


def test_inconsistent_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of the SEANet hop"):
        MimiConfig(name="x", seanet=SEANetConfig(ratios=(7, 6, 5, 4)))
    with pytest.raises(ConfigError, match="d_model"):
        MimiConfig(name="x", seanet=SEANetConfig(dimension=256))
