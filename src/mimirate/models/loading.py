"""Build a Mimi model from packaged weights, a checkpoint file, the hub, or a seed.

Our parameter names are Kyutai's (moshi's ``MimiModel``): a Kyutai checkpoint loads
as is. Hugging Face files are renamed and reshaped into that layout on load.
Everything is safetensors: pickled checkpoints (``.bin``, ``.pt``, ``.ckpt``) are
refused, because unpickling a stranger's file can run their code.

Layouts read (see docs/weights.md):

- ``kyutai``: ``tokenizer-e351c8d8-checkpoint125.safetensors`` and anything moshi's
  ``MimiModel.state_dict()`` gives (``in_proj_weight`` or ``in_projs.0.weight``).
- ``hf``: the ``kyutai/mimi`` hub ``model.safetensors`` written by transformers'
  conversion script at release, and what ``MimiModel.save_pretrained`` writes
  (transformers 4.45 to 5.24 write the same names).
- ``hf-module``: transformers 5.x module names (``encoder.encoder_seanet.layers...``),
  as in a ``state_dict()`` saved by hand.
- ``packaged``: our own directory of shards plus ``manifest.json`` and ``config.json``
  (:func:`save_packaged`), used for the presets' bundled weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from mimirate.config import (
    DEFAULT_MODEL,
    PRESETS,
    MimiConfig,
    QuantizerConfig,
    SEANetConfig,
    TransformerConfig,
    get_preset,
)
from mimirate.errors import CheckpointError, ConfigError
from mimirate.fileio import atomic_write, atomic_write_bytes
from mimirate.models.mimi import MimiModel
from mimirate.models.neural_codec import MimiCodec

__all__ = [
    "Layout",
    "LoadedModel",
    "convert_state_dict",
    "detect_layout",
    "load_codec",
    "load_model",
    "save_checkpoint",
    "save_packaged",
    "weights_hash",
]

#: Where the presets' bundled weights live: ``assets/<preset>/manifest.json``.
ASSETS_DIR = Path(str(resources.files("mimirate"))) / "assets"

MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "config.json"
MANIFEST_FORMAT = "mimirate-weights"
MANIFEST_VERSION = 1
#: Shard size cap for packaged weights: well under the 100 MB a git host accepts per file.
MAX_SHARD_BYTES = 48 * 1024 * 1024

#: Suffixes of pickled checkpoints, refused on sight.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Seconds to wait for the hub to answer before saying it cannot be reached.
HUB_TIMEOUT_S = 5.0
#: ``owner/name`` or ``owner/name/file.safetensors`` on the Hugging Face hub.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+\.safetensors)?$")

#: Shown when a file has the wrong keys: how many offending names to quote.
_MAX_KEYS_SHOWN = 5


class Layout(enum.Enum):
    """How a checkpoint file names its tensors."""

    KYUTAI = "kyutai"
    HF = "hf"
    HF_MODULE = "hf-module"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with what identifies its weights.

    Attributes:
        model: the network, in eval mode, on the requested device.
        config: its configuration (a preset: files name their model by preset).
        weights_hash: 8 bytes, :func:`weights_hash` of the loaded state dict.
        source: where the weights came from (a path, ``hub:...``, ``random:seed=0``).
        layout: the layout they were read in: a :class:`Layout` value, ``packaged``
            or ``random``.
    """

    model: MimiModel
    config: MimiConfig
    weights_hash: bytes
    source: str
    layout: str


# --------------------------------------------------------------------------- hashing


def weights_hash(state: Mapping[str, torch.Tensor]) -> bytes:
    """First 8 bytes of SHA-256 over the canonical form of ``state`` (our key names).

    Canonical form, tensor by tensor in sorted key order: the UTF-8 name and a NUL
    byte, ``b"float32\\0"``, the rank as little-endian uint32 and each dimension as
    little-endian uint64, then the values cast to float32, little-endian, row-major.
    The same weights therefore hash the same whatever layout or storage dtype
    (fp16, bf16) they were read from, as long as the values are the same after the
    cast to float32.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode("utf-8") + b"\0")
        h.update(b"float32\0")
        h.update(struct.pack(f"<I{t.dim()}Q", t.dim(), *t.shape))
        # numpy gives a zero-copy byte view; "<f4" pins the byte order on any host.
        h.update(np.ascontiguousarray(t.numpy(), dtype="<f4").view(np.uint8).data)
    return h.digest()[:8]


# ------------------------------------------------------------------- layout conversion


def detect_layout(keys: Iterable[str]) -> Layout:
    """Tell the layout of a checkpoint from its tensor names.

    Raises:
        CheckpointError: the names match none of the layouts we read.
    """
    keys = list(keys)
    starts = {k.split(".", 2)[0] + "." + k.split(".", 2)[1] for k in keys if k.count(".") >= 1}
    if "encoder.model" in starts or "quantizer.rvq_first" in starts:
        return Layout.KYUTAI
    if "encoder.encoder_seanet" in starts or "encoder.encoder_transformer" in starts:
        return Layout.HF_MODULE
    if "encoder.layers" in starts or "quantizer.semantic_residual_vector_quantizer" in starts:
        return Layout.HF
    shown = ", ".join(sorted(keys)[:_MAX_KEYS_SHOWN]) or "(no tensors)"
    raise CheckpointError(
        "not a Mimi checkpoint in a layout we know (Kyutai's original, Hugging Face "
        f"kyutai/mimi, or mimirate's own); its first tensors are: {shown}"
    )


# transformers 5.x module prefixes -> the names its save_pretrained writes (and the hub has).
_HF_MODULE_PREFIXES = (
    ("encoder.encoder_seanet.layers.", "encoder.layers."),
    ("encoder.encoder_transformer.", "encoder_transformer."),
    ("encoder.downsample.", "downsample."),
    ("decoder.decoder_seanet.layers.", "decoder.layers."),
    ("decoder.decoder_transformer.", "decoder_transformer."),
    ("decoder.upsample.", "upsample."),
)

# Transformer layer parts: Kyutai name -> Hugging Face name (q, k, v handled apart).
_HF_LAYER_PARTS = {
    "self_attn.out_proj.weight": "self_attn.o_proj.weight",
    "linear1.weight": "mlp.fc1.weight",
    "linear2.weight": "mlp.fc2.weight",
    "norm1.weight": "input_layernorm.weight",
    "norm1.bias": "input_layernorm.bias",
    "norm2.weight": "post_attention_layernorm.weight",
    "norm2.bias": "post_attention_layernorm.bias",
    "layer_scale_1.scale": "self_attn_layer_scale.scale",
    "layer_scale_2.scale": "mlp_layer_scale.scale",
}
_HF_RVQ = {
    "rvq_first": "semantic_residual_vector_quantizer",
    "rvq_rest": "acoustic_residual_vector_quantizer",
}
_HF_CODEBOOK = {
    "embedding_sum": "embed_sum",
    "cluster_usage": "cluster_usage",
    "_initialized": "initialized",
}
_HF_LAYER_PARTS_BACK = {b: a for a, b in _HF_LAYER_PARTS.items()}
_HF_RVQ_BACK = {b: a for a, b in _HF_RVQ.items()}
_HF_CODEBOOK_BACK = {b: a for a, b in _HF_CODEBOOK.items()}


def _decoder_convtr_indices(seanet: SEANetConfig) -> set[int]:
    """Positions of the transposed convs in the SEANet decoder's ``model`` list.

    The list is: conv, then per ratio [ELU, convtr, residual blocks...], then ELU,
    conv. Hugging Face names both kinds ``conv``; Kyutai names them ``conv``/``convtr``.
    """
    step = 2 + seanet.n_residual_layers
    return {2 + i * step for i in range(len(seanet.ratios))}


def _rope_permutation(rows: int, num_heads: int) -> torch.Tensor:
    """Row order that takes Kyutai's interleaved RoPE pairs to Hugging Face's halves.

    transformers rotates the two halves of each head (``rotate_half``) where moshi
    rotates adjacent pairs; its conversion script reorders q and k rows per head as
    ``w.view(heads, head_dim // 2, 2, dim).transpose(1, 2)``. ``hf = kyutai[perm]``.
    """
    head_dim = rows // num_heads
    idx = torch.arange(rows).view(num_heads, head_dim // 2, 2).transpose(1, 2)
    return idx.reshape(rows)


def _kyutai_to_hf_name(name: str) -> str:
    """The Hugging Face release name of a Kyutai tensor (q/k/v excepted; unknown: as is)."""
    m = re.fullmatch(r"(encoder|decoder)\.model\.(\d+)\.(conv|convtr)\.\3\.(weight|bias)", name)
    if m:
        return f"{m[1]}.layers.{m[2]}.conv.{m[4]}"
    m = re.fullmatch(
        r"(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.conv\.conv\.(weight|bias)", name
    )
    if m:
        return f"{m[1]}.layers.{m[2]}.block.{m[3]}.conv.{m[4]}"
    m = re.fullmatch(r"(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.(.+)", name)
    if m and m[3] in _HF_LAYER_PARTS:
        return f"{m[1]}_transformer.layers.{m[2]}.{_HF_LAYER_PARTS[m[3]]}"
    m = re.fullmatch(r"quantizer\.(rvq_first|rvq_rest)\.(input_proj|output_proj)\.weight", name)
    if m:
        return f"quantizer.{_HF_RVQ[m[1]]}.{m[2]}.weight"
    m = re.fullmatch(r"quantizer\.(rvq_first|rvq_rest)\.vq\.layers\.(\d+)\._codebook\.(\w+)", name)
    if m and m[3] in _HF_CODEBOOK:
        return f"quantizer.{_HF_RVQ[m[1]]}.layers.{m[2]}.codebook.{_HF_CODEBOOK[m[3]]}"
    return {
        "downsample.conv.conv.conv.weight": "downsample.conv.weight",
        "upsample.convtr.convtr.convtr.weight": "upsample.conv.weight",
    }.get(name, name)


def _hf_to_kyutai_name(name: str, config: MimiConfig) -> str:
    """The Kyutai name of a Hugging Face release tensor (q/k/v excepted; unknown: as is)."""
    m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.conv\.(weight|bias)", name)
    if m:
        transposed = m[1] == "decoder" and int(m[2]) in _decoder_convtr_indices(config.seanet)
        kind = "convtr" if transposed else "conv"
        return f"{m[1]}.model.{m[2]}.{kind}.{kind}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.block\.(\d+)\.conv\.(weight|bias)", name)
    if m:
        return f"{m[1]}.model.{m[2]}.block.{m[3]}.conv.conv.{m[4]}"
    m = re.fullmatch(r"(encoder|decoder)_transformer\.layers\.(\d+)\.(.+)", name)
    if m and m[3] in _HF_LAYER_PARTS_BACK:
        return f"{m[1]}_transformer.transformer.layers.{m[2]}.{_HF_LAYER_PARTS_BACK[m[3]]}"
    m = re.fullmatch(r"quantizer\.(\w+)\.(input_proj|output_proj)\.weight", name)
    if m and m[1] in _HF_RVQ_BACK:
        return f"quantizer.{_HF_RVQ_BACK[m[1]]}.{m[2]}.weight"
    m = re.fullmatch(r"quantizer\.(\w+)\.layers\.(\d+)\.codebook\.(\w+)", name)
    if m and m[1] in _HF_RVQ_BACK and m[3] in _HF_CODEBOOK_BACK:
        return (
            f"quantizer.{_HF_RVQ_BACK[m[1]]}.vq.layers.{m[2]}._codebook.{_HF_CODEBOOK_BACK[m[3]]}"
        )
    return {
        "downsample.conv.weight": "downsample.conv.conv.conv.weight",
        "upsample.conv.weight": "upsample.convtr.convtr.convtr.weight",
    }.get(name, name)


def _check_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Raise :class:`CheckpointError` naming the first offending keys, if any."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:_MAX_KEYS_SHOWN])})")
    if unexpected:
        shown = ", ".join(unexpected[:_MAX_KEYS_SHOWN])
        problems.append(f"{len(unexpected)} unexpected (e.g. {shown})")
    if wrong:
        shown = ", ".join(
            f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}" for k in wrong[:_MAX_KEYS_SHOWN]
        )
        problems.append(f"{len(wrong)} of the wrong shape (e.g. {shown})")
    if problems:
        raise CheckpointError(f"{what}: tensors do not match the model: " + "; ".join(problems))


def _kyutai_attention_to_model(
    state: dict[str, torch.Tensor], expected: Mapping[str, Any] | None
) -> dict[str, torch.Tensor]:
    """Rename attention projections to the variant the model uses.

    Kyutai's file says ``self_attn.in_proj_weight`` / ``out_proj.weight``; moshi
    0.2.13 modules say ``in_projs.0.weight`` / ``out_projs.0.weight``. Both occur in
    the wild; the model's own names decide (the file's names are kept without one).
    """
    if expected is None:
        return state
    variants = (
        ("self_attn.in_proj_weight", "self_attn.in_projs.0.weight"),
        ("self_attn.in_proj.weight", "self_attn.in_projs.0.weight"),
        ("self_attn.out_proj.weight", "self_attn.out_projs.0.weight"),
    )
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k not in expected:
            for a, b in variants:
                for src, dst in ((a, b), (b, a)):
                    if k.endswith(src) and k[: -len(src)] + dst in expected:
                        k = k[: -len(src)] + dst
                        break
        out[k] = v
    return out


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    source: Layout,
    target: Layout,
    config: MimiConfig,
) -> dict[str, torch.Tensor]:
    """Rename (and for q/k, reorder) tensors from one layout to another.

    Kyutai names are the hub: every conversion goes through them. Attention
    in-projections come out in Kyutai's file form (``in_proj_weight``, q, k, v
    stacked ``[3 * d_model, d_model]``). Unknown names are kept as they are, so the
    caller's key check names them.

    Args:
        state: name -> tensor, in ``source`` layout.
        config: the model configuration (head count, decoder layer kinds, levels).
    """
    if source == target:
        return dict(state)
    if source != Layout.KYUTAI:
        kyutai = _hf_to_kyutai(state, source, config)
        return convert_state_dict(kyutai, Layout.KYUTAI, target, config)
    hf = _kyutai_to_hf(state, config)
    if target == Layout.HF:
        return hf
    out = {}
    for k, v in hf.items():
        for theirs, file_name in _HF_MODULE_PREFIXES:
            if k.startswith(file_name):
                k = theirs + k[len(file_name) :]
                break
        out[k] = v
    return out


def _kyutai_to_hf(state: Mapping[str, torch.Tensor], config: MimiConfig) -> dict[str, torch.Tensor]:
    heads = config.transformer.num_heads
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for src in ("self_attn.in_proj_weight", "self_attn.in_projs.0.weight"):
            if k.endswith(src):
                base = k[: -len(src)].replace(".transformer.layers.", ".layers.")
                q, kk, vv = v.chunk(3, dim=0)
                perm = _rope_permutation(q.shape[0], heads)
                out[base + "self_attn.q_proj.weight"] = q[perm]
                out[base + "self_attn.k_proj.weight"] = kk[perm]
                out[base + "self_attn.v_proj.weight"] = vv
                break
        else:
            k = k.replace("self_attn.out_projs.0.weight", "self_attn.out_proj.weight")
            out[_kyutai_to_hf_name(k)] = v
    return out


def _hf_to_kyutai(
    state: Mapping[str, torch.Tensor], source: Layout, config: MimiConfig
) -> dict[str, torch.Tensor]:
    if source == Layout.HF_MODULE:
        renamed = {}
        for k, v in state.items():
            for theirs, file_name in _HF_MODULE_PREFIXES:
                if k.startswith(theirs):
                    k = file_name + k[len(theirs) :]
                    break
            renamed[k] = v
        state = renamed
    heads = config.transformer.num_heads
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = re.fullmatch(r"(\w+_transformer)\.layers\.(\d+)\.self_attn\.([qkv])_proj\.weight", k)
        if m:
            base = f"{m[1]}.transformer.layers.{m[2]}.self_attn.in_proj_weight"
            qkv.setdefault(base, {})[m[3]] = v
        else:
            out[_hf_to_kyutai_name(k, config)] = v
    for base, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            have = ", ".join(sorted(parts))
            raise CheckpointError(f"attention of {base} has only {have} of q, k, v projections")
        inverse = torch.argsort(_rope_permutation(parts["q"].shape[0], heads))
        out[base] = torch.cat([parts["q"][inverse], parts["k"][inverse], parts["v"]], dim=0)
    return out


# -------------------------------------------------------------------- config checks

# transformers MimiConfig field -> how to read the same value from ours.
_HF_CONFIG_FIELDS: dict[str, Any] = {
    "sampling_rate": lambda c: c.sample_rate,
    "audio_channels": lambda c: c.seanet.channels,
    "hidden_size": lambda c: c.seanet.dimension,
    "num_filters": lambda c: c.seanet.n_filters,
    "num_residual_layers": lambda c: c.seanet.n_residual_layers,
    "upsampling_ratios": lambda c: list(c.seanet.ratios),
    "kernel_size": lambda c: c.seanet.kernel_size,
    "last_kernel_size": lambda c: c.seanet.last_kernel_size,
    "residual_kernel_size": lambda c: c.seanet.residual_kernel_size,
    "dilation_growth_rate": lambda c: c.seanet.dilation_base,
    "compress": lambda c: c.seanet.compress,
    "use_causal_conv": lambda c: True,
    "pad_mode": lambda c: "constant",
    "use_conv_shortcut": lambda c: not c.seanet.true_skip,
    "num_hidden_layers": lambda c: c.transformer.num_layers,
    "num_attention_heads": lambda c: c.transformer.num_heads,
    "num_key_value_heads": lambda c: c.transformer.num_heads,
    "head_dim": lambda c: c.transformer.head_dim,
    "intermediate_size": lambda c: c.transformer.dim_feedforward,
    "sliding_window": lambda c: c.transformer.context,
    "hidden_act": lambda c: "gelu",
    "num_quantizers": lambda c: c.quantizer.n_q,
    "num_semantic_quantizers": lambda c: c.quantizer.n_q_semantic,
    "codebook_size": lambda c: c.quantizer.bins,
    "codebook_dim": lambda c: c.quantizer.dimension,
    "vector_quantization_hidden_dimension": lambda c: c.quantizer.dimension,
    "upsample_groups": lambda c: c.seanet.dimension,
}


def _hf_rope_theta(hf: Mapping[str, Any]) -> float | None:
    # 4.45 wrote `rope_theta`; 5.x writes `rope_parameters: {rope_theta: ...}`.
    params = hf.get("rope_parameters")
    if isinstance(params, Mapping) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(hf["rope_theta"]) if "rope_theta" in hf else None


def _check_hf_config(hf: Mapping[str, Any], config: MimiConfig, where: Path) -> None:
    """Compare a transformers ``config.json`` with ``config``; raise on any difference."""
    diffs = []
    for field, ours in _HF_CONFIG_FIELDS.items():
        if field in hf and hf[field] != ours(config):
            diffs.append(f"{field}={hf[field]!r} (model {config.name!r} has {ours(config)!r})")
    theta = _hf_rope_theta(hf)
    if theta is not None and not math.isclose(theta, config.transformer.max_period):
        diffs.append(f"rope_theta={theta} (model has {config.transformer.max_period})")
    frame_rate = hf.get("_frame_rate") or hf.get("frame_rate")
    if frame_rate is not None and not math.isclose(float(frame_rate), config.frame_rate):
        diffs.append(f"frame_rate={frame_rate} (model has {config.frame_rate})")
    if diffs:
        raise CheckpointError(
            f"{where} describes a different model than preset {config.name!r}: "
            + "; ".join(diffs[:_MAX_KEYS_SHOWN])
        )


def hf_config_dict(config: MimiConfig) -> dict[str, Any]:
    """The transformers ``MimiConfig`` fields that describe ``config`` (for config.json)."""
    d = {field: read(config) for field, read in _HF_CONFIG_FIELDS.items()}
    d.update(
        model_type="mimi",
        architectures=["MimiModel"],
        rope_theta=config.transformer.max_period,
        layer_scale_initial_scale=config.transformer.layer_scale,
        norm_eps=1e-5,
        frame_rate=config.frame_rate,
    )
    return d


def config_to_dict(config: MimiConfig) -> dict[str, Any]:
    """``config`` as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(d: Mapping[str, Any]) -> MimiConfig:
    """Rebuild a :class:`MimiConfig` from :func:`config_to_dict`'s output, strictly.

    Raises:
        CheckpointError: unknown or missing fields, or values of the wrong type.
    """

    def build(cls: type, data: Any, where: str) -> Any:
        if not isinstance(data, Mapping):
            raise CheckpointError(f"config {where}: expected an object, got {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise CheckpointError(f"config {where}: unknown fields {', '.join(unknown)}")
        kwargs = dict(data)
        for name, sub in (
            ("seanet", SEANetConfig),
            ("transformer", TransformerConfig),
            ("quantizer", QuantizerConfig),
        ):
            if cls is MimiConfig and name in kwargs:
                kwargs[name] = build(sub, kwargs[name], f"{where}.{name}")
        if "ratios" in kwargs:
            kwargs["ratios"] = tuple(kwargs["ratios"])
        try:
            return cls(**kwargs)
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"config {where}: {e}") from None

    return build(MimiConfig, d, "")


# ----------------------------------------------------------------- building models


def _new_model(config: MimiConfig) -> MimiModel:
    return MimiModel(config)


def _expected_shapes(config: MimiConfig) -> dict[str, tuple[int, ...]]:
    """Our state-dict names and shapes for ``config``, without allocating weights."""
    with torch.device("meta"):
        model = _new_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


#: Seconds of synthetic audio run through a random model to scale its codebooks.
_CALIBRATION_SECONDS = 2.0
#: Centroid spread relative to the residual's per-dimension spread at each level:
#: below 1 so that the nearest centroid shrinks the residual on average.
_CENTROID_SCALE = 0.5


def _calibration_audio(config: MimiConfig, generator: torch.Generator) -> torch.Tensor:
    """``[1, 1, N]`` seeded noise under a syllable-rate envelope, a stand-in for speech."""
    frames = max(1, round(_CALIBRATION_SECONDS * config.frame_rate))
    n = frames * config.frame_size
    t = torch.arange(n) / config.sample_rate
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 4.0 * t)
    noise = torch.randn(n, generator=generator)
    return (0.1 * envelope * noise).view(1, 1, n)


def _randomize_quantizer(model: MimiModel, generator: torch.Generator) -> None:
    """Random codebooks scaled to a random model's own latents, so codes are meaningful.

    A freshly built quantizer has all-zero centroids: every vector maps to code 0.
    Here each level gets distinct Gaussian centroids (usage 1, marked initialised)
    whose mean and spread follow the residual that level sees on synthetic audio, and each
    output projection becomes its input projection's pseudo-inverse. Then codes use
    much of each codebook and the latent error falls as levels are added, as with
    trained weights, which is what bitstream and rate-control tests need.
    """
    config = model.config
    x = _calibration_audio(config, generator)
    latent = model.encode_latent_step(x, model.init_encoder_state(1))  # [1, C, T]
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        w = rvq.input_proj.weight[:, :, 0]  # [dim, C]
        rvq.output_proj.weight.copy_(torch.linalg.pinv(w)[:, :, None])
        residual = (w @ latent[0]).T  # [T, dim]
        for level in range(rvq.n_levels):
            book = rvq.codebook(level)
            # Around the residual's mean: random latents carry a large constant part.
            center = residual.mean(dim=0)
            spread = residual.std(dim=0, correction=0).clamp_min(1e-6) * _CENTROID_SCALE
            noise = torch.randn(book.embedding_sum.shape, generator=generator)
            book.embedding_sum.copy_(center + noise * spread)
            book.cluster_usage.fill_(1.0)
            book._initialized.fill_(1.0)
            residual = residual - book.lookup(book.nearest(residual))


def _random_model(config: MimiConfig, seed: int) -> MimiModel:
    # fork_rng: the caller's global RNG state is neither used nor changed.
    # One thread for the calibration: float sums in a different order (another thread
    # count) would give other centroids and so another weights hash, and a client and a
    # server with different thread settings would refuse each other's codes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _new_model(config).eval()
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                _randomize_quantizer(model, generator)
    finally:
        torch.set_num_threads(threads)
    return model


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU, in their stored dtype."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: {path.suffix} checkpoints are pickles, and loading a pickle can run "
            "arbitrary code; mimirate reads safetensors only. Convert it in a trusted "
            "environment (safetensors.torch.save_file(torch.load(f, weights_only=True), ...)) "
            "or download the .safetensors release."
        )
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, expected a .safetensors file") from None
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); re-download it"
        ) from None


def _load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _check_keys(state, expected, what)
    for k, v in state.items():
        if not v.dtype.is_floating_point:
            raise CheckpointError(f"{what}: tensor {k} has dtype {v.dtype}, expected floats")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


def _presets_to_try(requested: str | None) -> list[MimiConfig]:
    if requested is not None:
        return [get_preset(requested)]
    return [PRESETS["mimi"], *(c for n, c in PRESETS.items() if n != "mimi")]


def _from_checkpoint_file(path: Path, requested: str | None) -> tuple[MimiModel, MimiConfig, str]:
    """Load a Kyutai or Hugging Face safetensors file; the preset is matched by shapes."""
    raw = _read_safetensors(path)
    layout = detect_layout(raw)
    hf_config = None
    if layout != Layout.KYUTAI and (path.parent / CONFIG_NAME).is_file():
        try:
            hf_config = json.loads((path.parent / CONFIG_NAME).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path.parent / CONFIG_NAME} is not valid JSON: {e}") from None
    first_error: CheckpointError | None = None
    for config in _presets_to_try(requested):
        try:
            if hf_config is not None:
                _check_hf_config(hf_config, config, path.parent / CONFIG_NAME)
            expected = _expected_shapes(config)
            state = convert_state_dict(raw, layout, Layout.KYUTAI, config)
            state = _kyutai_attention_to_model(state, expected)
            _check_keys(state, expected, f"{path} ({layout.value} layout, preset {config.name!r})")
        except CheckpointError as e:
            first_error = first_error or e
            continue
        model = _new_model(config)
        _load_into(model, state, str(path))
        return model, config, layout.value
    assert first_error is not None
    raise first_error


def _from_packaged(directory: Path, requested: str | None) -> tuple[MimiModel, MimiConfig, bytes]:
    """Load :func:`save_packaged` output, checking every file's SHA-256 and the hash."""
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path} not found") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{manifest_path} is not valid JSON: {e}") from None
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise CheckpointError(
            f"{manifest_path}: not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} manifest "
            f"(format={manifest.get('format')!r}, version={manifest.get('version')!r}); "
            "a newer mimirate may be needed"
        )
    try:
        files = [(entry["file"], entry["sha256"]) for entry in manifest["shards"]]
        files.append((CONFIG_NAME, manifest["config_sha256"]))
        expected_hash = bytes.fromhex(manifest["weights_hash"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{manifest_path}: malformed manifest ({e!r})") from None
    for name, digest in files:
        file = directory / name
        if Path(name).name != name:
            raise CheckpointError(f"{manifest_path}: shard name {name!r} must be a bare file name")
        if not file.is_file():
            raise CheckpointError(f"{file} is listed in {manifest_path} but missing; reinstall it")
        if _sha256_file(file) != digest:
            raise CheckpointError(f"{file} is corrupt (SHA-256 differs from {MANIFEST_NAME})")
    try:
        config = config_from_dict(json.loads((directory / CONFIG_NAME).read_text()))
    except ValueError as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from None
    if requested is not None and config != get_preset(requested):
        raise CheckpointError(
            f"the weights in {directory} were built for a configuration that differs from "
            f"preset {requested!r} in config.py; repackage them with save_packaged or update "
            "the preset"
        )
    state: dict[str, torch.Tensor] = {}
    for name, _ in files[:-1]:
        shard = _read_safetensors(directory / name)
        if set(shard) & set(state):
            raise CheckpointError(f"{directory / name} repeats tensors of another shard")
        state.update(shard)
    model = _new_model(config)
    _load_into(model, state, str(directory))
    if weights_hash(model.state_dict()) != expected_hash:
        raise CheckpointError(f"{directory}: weights hash differs from {MANIFEST_NAME}")
    return model, config, expected_hash


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it again for callers
    # that set it later in the process.
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in {"1", "on", "yes", "true"}


def _download(repo_id: str) -> Path:
    """Fetch a checkpoint (and config.json when there is one) from the hub, or the cache.

    huggingface_hub retries an unreachable hub with back-off for half a minute or more
    before giving up; we look in the cache first, then ask the hub once with a short
    timeout and no retries, and only then download.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    parts = repo_id.split("/")
    repo, filename = "/".join(parts[:2]), (parts[2] if len(parts) == 3 else "model.safetensors")
    wanted = [filename, *([CONFIG_NAME] if filename == "model.safetensors" else [])]

    def get(name: str, local: bool) -> Path:
        return Path(hf_hub_download(repo, name, etag_timeout=HUB_TIMEOUT_S, local_files_only=local))

    with contextlib.suppress(Exception):
        path = get(filename, local=True)
        with contextlib.suppress(Exception):
            get(CONFIG_NAME, local=True)
        return path
    offline = _hub_offline()
    try:
        if offline:
            raise RuntimeError("offline mode (HF_HUB_OFFLINE) is on and the file is not cached")
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=HUB_TIMEOUT_S)
        path = get(filename, local=False)
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, I/O)
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"could not get {filename} from the Hugging Face hub repo {repo!r} "
            f"({type(e).__name__}: {first_line}). Download the file on a machine with "
            "network access and pass its path: --model PATH (or load_codec(path=...))."
        ) from None
    for name in wanted[1:]:
        # The config is small and tells us which preset the weights are for; optional.
        with contextlib.suppress(Exception):
            get(name, local=False)
    return path


def _resolve(model: str | None, path: str | os.PathLike[str] | None) -> tuple[str, Path | None]:
    """Turn (model, path) into ("preset", None) / ("file", path) / ("hub", None) forms."""
    if path is not None:
        return "file", Path(path)
    name = DEFAULT_MODEL if model is None else model
    if name in PRESETS:
        return "preset", None
    if Path(name).exists() or Path(name).suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        return "file", Path(name)
    if _HUB_ID.match(name):
        return "hub", None
    known = ", ".join(sorted(PRESETS))
    raise ConfigError(
        f"{name!r} is not a preset ({known}), an existing file, or a hub repo id like kyutai/mimi"
    )


def load_model(
    model: str | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    random_init: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Build a model and its weights.

    Args:
        model: a preset name (``small``, ``mimi``, ``tiny``: the weights packaged in
            ``mimirate/assets/<name>/``), a checkpoint path (file or packaged
            directory), or a hub repo id (``kyutai/mimi``, or
            ``owner/repo/file.safetensors``). ``None`` means :data:`DEFAULT_MODEL`,
            or, with ``path``, the preset the file's shapes match.
        path: a checkpoint file or packaged directory; ``model``, if given, must then
            be the preset the file is for.
        device: where the model runs (``cpu``, ``cuda``...).
        random_init: build preset ``model`` with seeded random weights (for tests);
            codebooks get distinct random centroids.
        seed: the seed for ``random_init``.

    Raises:
        ConfigError: unknown preset, or ``random_init`` with a file.
        CheckpointError: weights missing, unreadable, pickled, or not for the model.
    """
    kind, file = _resolve(model, path)
    requested = model if (model is not None and model in PRESETS) else None
    if model is not None and kind == "file" and path is not None and model not in PRESETS:
        raise ConfigError(f"with path=, model must be a preset name, got {model!r}")
    if random_init:
        if kind != "preset":
            raise ConfigError("random_init builds a preset: pass a preset name, not a file")
        config = get_preset(model or DEFAULT_MODEL)
        net = _random_model(config, seed)
        source, layout = f"random:{config.name}:seed={seed}", "random"
        digest = weights_hash(net.state_dict())
    elif kind == "preset":
        name = model or DEFAULT_MODEL
        directory = ASSETS_DIR / name
        if not (directory / MANIFEST_NAME).is_file():
            raise CheckpointError(
                f"no packaged weights for model {name!r} (looked in {directory}). "
                "Pass a checkpoint with --model PATH (e.g. Kyutai's "
                "tokenizer-e351c8d8-checkpoint125.safetensors or kyutai/mimi's "
                "model.safetensors for --model mimi), a hub id such as kyutai/mimi, or "
                "install a mimirate build that ships these weights."
            )
        net, config, digest = _from_packaged(directory, name)
        source, layout = str(directory), "packaged"
    else:
        if kind == "hub":
            assert model is not None
            file = _download(model)
            source = f"hub:{model}"
        else:
            assert file is not None
            source = str(file)
        assert file is not None
        if file.is_dir():
            if (file / MANIFEST_NAME).is_file():
                net, config, digest = _from_packaged(file, requested)
                layout = "packaged"
            elif (file / "model.safetensors").is_file():
                net, config, layout = _from_checkpoint_file(file / "model.safetensors", requested)
                digest = weights_hash(net.state_dict())
            else:
                raise CheckpointError(
                    f"{file} holds neither {MANIFEST_NAME} (mimirate weights) nor "
                    "model.safetensors (Hugging Face); pass the checkpoint file itself"
                )
        else:
            net, config, layout = _from_checkpoint_file(file, requested)
            digest = weights_hash(net.state_dict())
    net.eval()
    net.to(device)
    return LoadedModel(model=net, config=config, weights_hash=digest, source=source, layout=layout)


def load_codec(
    model: str | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    random_init: bool = False,
    seed: int = 0,
    encoder_dtype: torch.dtype = torch.float32,
    decoder_dtype: torch.dtype = torch.float32,
) -> MimiCodec:
    """A :class:`~mimirate.codec.Codec` ready to encode and decode (see :func:`load_model`).

    ``decoder_dtype=torch.bfloat16`` computes the decoder's half in bfloat16: the codes
    are float32's, the audio ~40 dB SNR from float32's, the decoder's weights half the
    memory (README, "Speed"); ``encoder_dtype=torch.bfloat16`` changes codes.

    Example:
        >>> codec = load_codec("tiny", random_init=True, seed=0)
        >>> codec.frame_size
        1920
    """
    loaded = load_model(model, path=path, device=device, random_init=random_init, seed=seed)
    return MimiCodec(
        loaded.model,
        loaded.config,
        loaded.weights_hash,
        device=device,
        encoder_dtype=encoder_dtype,
        decoder_dtype=decoder_dtype,
    )


# ----------------------------------------------------------------------- writers


def _safetensors_bytes(state: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    # safetensors refuses views that share storage; give it compact, contiguous copies.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return safetensors.torch.save(tensors, metadata=metadata)


def save_checkpoint(
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    config: MimiConfig,
    layout: Layout = Layout.KYUTAI,
) -> Path:
    """Write a model's weights as one safetensors file in ``layout``, atomically.

    ``Layout.KYUTAI`` gives a file moshi's ``get_mimi`` loads; ``Layout.HF`` the
    ``kyutai/mimi`` hub layout, with a transformers ``config.json`` beside it.
    Returns the file's path.
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    if layout != Layout.KYUTAI:
        state = convert_state_dict(state, Layout.KYUTAI, layout, config)
    else:
        # Kyutai's own file stacks attention as `in_proj_weight`.
        state = {
            k.replace("self_attn.in_projs.0.weight", "self_attn.in_proj_weight").replace(
                "self_attn.out_projs.0.weight", "self_attn.out_proj.weight"
            ): v
            for k, v in state.items()
        }
    target = Path(path)
    atomic_write_bytes(target, _safetensors_bytes(state, {"format": "pt"}))
    if layout != Layout.KYUTAI:
        text = json.dumps(hf_config_dict(config), indent=2) + "\n"
        atomic_write_bytes(target.parent / CONFIG_NAME, text.encode())
    return target


def save_packaged(
    model: torch.nn.Module,
    config: MimiConfig,
    directory: str | os.PathLike[str],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``model`` as mimirate packaged weights: shards, config.json, manifest.json.

    Floating tensors are stored in ``dtype`` (fp16 halves the size); a tensor whose
    values do not fit ``dtype``'s range stays float32. The manifest records each
    file's SHA-256 and the weights hash of the stored values as they will load
    (after the cast back to float32); the loader checks both. The manifest is
    written last, so a directory with a manifest is complete. Returns its path.
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"packaged weights are float32, float16 or bfloat16, not {dtype}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stored: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu", torch.float32)
        cast = v.to(dtype)
        stored[k] = cast if torch.isfinite(cast).all() or not torch.isfinite(v).all() else v
    shards: list[dict[str, str]] = []
    chunk: dict[str, torch.Tensor] = {}
    size = 0
    groups: list[dict[str, torch.Tensor]] = []
    for k in sorted(stored):
        nbytes = stored[k].numel() * stored[k].element_size()
        if chunk and size + nbytes > MAX_SHARD_BYTES:
            groups.append(chunk)
            chunk, size = {}, 0
        chunk[k] = stored[k]
        size += nbytes
    groups.append(chunk)
    for i, group in enumerate(groups, 1):
        name = f"weights-{i:05d}-of-{len(groups):05d}.safetensors"
        data = _safetensors_bytes(group, {"format": "pt"})
        atomic_write_bytes(out / name, data)
        shards.append({"file": name, "sha256": hashlib.sha256(data).hexdigest()})
    config_bytes = (json.dumps(config_to_dict(config), indent=2) + "\n").encode()
    atomic_write_bytes(out / CONFIG_NAME, config_bytes)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "name": config.name,
        "dtype": str(dtype).removeprefix("torch."),
        "weights_hash": weights_hash(stored).hex(),
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "shards": shards,
    }
    with atomic_write(out / MANIFEST_NAME) as f:
        f.write((json.dumps(manifest, indent=2) + "\n").encode())
    return out / MANIFEST_NAME
