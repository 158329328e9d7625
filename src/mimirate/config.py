"""Model configuration: frozen dataclasses per component and a table of named presets.

The preset name is written into every ``.mimi`` file, so a decoder can rebuild the
model that produced it. Every size is a field here, never a constant in a module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mimirate.errors import ConfigError


@dataclass(frozen=True)
class SEANetConfig:
    """The convolutional encoder/decoder (SEANet) that maps audio to a 25 Hz latent."""

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    n_residual_layers: int = 1
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    compress: int = 2
    dilation_base: int = 2
    true_skip: bool = True

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclass(frozen=True)
class TransformerConfig:
    """The causal transformer after the encoder and before the decoder (runs at 25 Hz)."""

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250
    max_period: float = 10_000.0
    layer_scale: float = 0.01

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


@dataclass(frozen=True)
class QuantizerConfig:
    """The split residual vector quantizer.

    ``n_q_semantic`` first levels form ``rvq_first``; the other ``n_q - n_q_semantic``
    form ``rvq_rest``. Both quantize the same projected latent; their decoded
    outputs are summed.
    """

    n_q: int = 32
    n_q_semantic: int = 1
    bins: int = 2048
    dimension: int = 256
    decay: float = 0.99
    threshold_usage_ratio: float = 0.1

    @property
    def bits_per_code(self) -> int:
        return math.ceil(math.log2(self.bins))


@dataclass(frozen=True)
class MimiConfig:
    """A whole codec: audio rate, frame rate and the components."""

    name: str
    sample_rate: int = 24_000
    frame_rate: float = 12.5
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        frame = self.sample_rate / self.frame_rate
        if frame != int(frame):
            raise ConfigError(f"{self.name}: sample_rate / frame_rate must be an integer")
        stride = int(frame) // self.seanet.hop_length
        if stride * self.seanet.hop_length != int(frame) or stride < 1:
            raise ConfigError(
                f"{self.name}: the frame ({int(frame)} samples) must be a multiple of the "
                f"SEANet hop ({self.seanet.hop_length})"
            )
        if self.transformer.d_model != self.seanet.dimension:
            raise ConfigError(f"{self.name}: transformer d_model must equal SEANet dimension")
        if not 1 <= self.quantizer.n_q_semantic < self.quantizer.n_q:
            raise ConfigError(f"{self.name}: need 1 <= n_q_semantic < n_q")

    @property
    def frame_size(self) -> int:
        """Samples per frame (1920 for Mimi: 80 ms at 24 kHz)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        """Rate of the SEANet latent (25 Hz for Mimi)."""
        return self.sample_rate / self.seanet.hop_length

    @property
    def downsample_stride(self) -> int:
        """Stride of the learnt conv from the SEANet rate to the frame rate (2 for Mimi)."""
        return self.frame_size // self.seanet.hop_length


#: Kyutai's released configuration (moshi ``loaders.py``, transformers ``MimiConfig()``).
MIMI = MimiConfig(name="mimi")

#: The default model we train ourselves: Mimi's quantizer geometry (32 levels of 2048
#: entries, one semantic-style first level), smaller networks so it streams with room
#: to spare on two CPU cores. The sizes are set by what a GPU training run can carry
#: (issue 4): code, data bundle, packaged weights and the resumable checkpoint (fp32
#: weights + two Adam moments, ~12 bytes per parameter) must fit in 64 MiB together, so
#: the model has ~2.6 M parameters and 32 x 2048 x 32 codebook values.
SMALL = MimiConfig(
    name="small",
    seanet=SEANetConfig(dimension=128, n_filters=16),
    transformer=TransformerConfig(d_model=128, num_heads=4, num_layers=2, dim_feedforward=512),
    quantizer=QuantizerConfig(dimension=32),
)

#: A very small configuration for fast tests (random weights only).
TINY = MimiConfig(
    name="tiny",
    seanet=SEANetConfig(dimension=64, n_filters=8),
    transformer=TransformerConfig(d_model=64, num_heads=2, num_layers=1, dim_feedforward=128),
    quantizer=QuantizerConfig(dimension=16),
)

PRESETS: dict[str, MimiConfig] = {c.name: c for c in (MIMI, SMALL, TINY)}

#: The model used when the user names none.
DEFAULT_MODEL = "small"


def get_preset(name: str) -> MimiConfig:
    """Return the preset called ``name``; raise :class:`ConfigError` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ConfigError(f"unknown model preset {name!r}; known presets: {known}") from None
