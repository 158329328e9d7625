"""Parity with the reference implementations, through our loader.

Random weights (seeded) in the official configuration, written by the references
themselves (transformers' ``save_pretrained``, moshi's ``state_dict``), loaded with
``load_codec(path=...)``: codes must be identical at 8 and 32 levels and decoded
audio within 1e-4 relative error, offline and, against moshi, frame by frame.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from mimirate.audio import read_audio
from mimirate.config import MIMI
from mimirate.models.loading import load_codec, weights_hash

pytestmark = pytest.mark.parity

SHARED_CLIP = (
    Path(__file__).resolve().parents[2] / "shared/data/speech/ljspeech-excerpt/LJ001-0001.wav"
)
FRAMES = 50  # 4 s
STREAM_FRAMES = 12  # frame-by-frame comparison on the first second
AUDIO_TOL = 1e-4


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """4 s of real speech at 24 kHz (a synthetic voice-like signal without shared data)."""
    n = FRAMES * MIMI.frame_size
    if SHARED_CLIP.is_file():
        return read_audio(SHARED_CLIP, MIMI.sample_rate).samples[:n].copy()
    t = np.arange(n) / MIMI.sample_rate
    pitch = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / MIMI.sample_rate
    voice = sum(np.sin(k * pitch) / k for k in range(1, 20)) * (0.5 + 0.5 * np.sin(6 * t))
    noise = np.random.default_rng(0).standard_normal(n) * 0.01
    return (0.2 * voice + noise).astype(np.float32)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@torch.no_grad()
def _spread_codebooks(
    latent: torch.Tensor,
    rvqs: Iterable[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]],
    generator: torch.Generator,
) -> None:
    """Make random-weight codebooks non-degenerate (a fresh one maps everything to 0).

    For each residual quantizer (input projection ``[dim, C, 1]``, levels as
    ``(embedding_sum, cluster_usage)`` buffers), level by level: centroids around
    the residual's mean with half its spread, random usages (so the division by
    usage is exercised), then the residual moves on past the nearest centroid.
    """
    for proj, levels in rvqs:
        residual = (proj[:, :, 0] @ latent[0]).T  # [T, dim]
        for embedding_sum, usage in levels:
            centroids = residual.mean(0) + 0.5 * residual.std(0) * torch.randn(
                embedding_sum.shape, generator=generator
            )
            usage.copy_(0.5 + torch.rand(usage.shape, generator=generator))
            embedding_sum.copy_(centroids * usage[:, None])
            nearest = torch.cdist(residual[None], centroids[None])[0].argmin(-1)
            residual = residual - centroids[nearest]


@torch.no_grad()
def _randomize_layer_scales(named: Iterable[tuple[str, torch.Tensor]], g: torch.Generator) -> None:
    # The 0.01 initial layer scale makes the transformers nearly transparent; larger
    # random scales make them matter, so a mistake in them shows in the output.
    for name, p in named:
        if re.search(r"layer_scale", name):
            p.copy_(0.1 + 0.5 * torch.rand(p.shape, generator=g))


# ------------------------------------------------------------------ transformers


@pytest.fixture(scope="module")
def hf_model(speech: np.ndarray) -> torch.nn.Module:
    from transformers import MimiConfig, MimiModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MimiModel(MimiConfig()).eval()
    g = torch.Generator().manual_seed(0)
    _randomize_layer_scales(model.named_parameters(), g)
    x = torch.from_numpy(speech)[None, None]
    with torch.no_grad():
        latent = model.encoder(x).latents
    q = model.quantizer
    rvqs = [
        (
            rvq.input_proj.weight,
            [(lv.codebook.embed_sum, lv.codebook.cluster_usage) for lv in rvq.layers],
        )
        for rvq in (q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer)
    ]
    _spread_codebooks(latent, rvqs, g)
    return model


def _hf_save_pretrained(model: torch.nn.Module, d: Path) -> Path:
    model.save_pretrained(d)
    return d


def _hf_module_state(model: torch.nn.Module, d: Path) -> Path:
    # transformers 5.x module names, as a hand-written `save_file(model.state_dict())` gives.
    d.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(d / "model.safetensors"))
    return d / "model.safetensors"


@pytest.mark.parametrize("writer", [_hf_save_pretrained, _hf_module_state])
def test_transformers_parity(
    writer: Callable[[torch.nn.Module, Path], Path],
    hf_model: torch.nn.Module,
    speech: np.ndarray,
    tmp_path: Path,
) -> None:
    codec = load_codec(path=writer(hf_model, tmp_path / "hf"))
    assert codec.name == "mimi"
    x = torch.from_numpy(speech)[None, None]
    for levels in (8, 32):
        with torch.no_grad():
            ref_codes = hf_model.encode(x, num_quantizers=levels).audio_codes
            ref_audio = hf_model.decode(ref_codes).audio_values[0, 0].numpy()
        enc = codec.encode(speech, levels=levels)
        assert np.array_equal(enc.codes, ref_codes[0].numpy())
        assert len(np.unique(enc.codes[0])) > 10  # the codes say something
        assert _rel(codec.decode(enc.codes), ref_audio) < AUDIO_TOL


# ------------------------------------------------------------------------- moshi


@pytest.fixture(scope="module")
def moshi_model(speech: np.ndarray) -> torch.nn.Module:
    from moshi.models.loaders import get_mimi

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = get_mimi(None, num_codebooks=MIMI.quantizer.n_q).eval()
    g = torch.Generator().manual_seed(1)
    _randomize_layer_scales(model.named_parameters(), g)
    with torch.no_grad():
        latent = model.encode_to_latent(torch.from_numpy(speech)[None, None], quantize=False)
    rvqs = []
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        books = [layer._codebook for layer in rvq.vq.layers]
        for book in books:
            book._initialized.fill_(1.0)
        rvqs.append((rvq.input_proj.weight, [(b.embedding_sum, b.cluster_usage) for b in books]))
    _spread_codebooks(latent, rvqs, g)
    return model


def _official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """moshi 0.2.13 module names -> those in tokenizer-e351c8d8-checkpoint125.safetensors."""
    return {
        k.replace("in_projs.0.weight", "in_proj_weight").replace("out_projs.0.", "out_proj."): v
        for k, v in state.items()
    }


def _release_conversion(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' `convert_mimi_checkpoint_to_pytorch.py` rules, as the hub file got them.

    Each name goes through the substring rules in order; q and k rows are reordered
    per head for transformers' RoPE convention. Written here from the script's rules
    so that the loader's inverse is checked against an independent transcription.
    """
    rules = [
        ("conv.conv.conv", "conv"),
        ("convtr.convtr.convtr", "conv"),
        ("conv.conv", "conv"),
        ("convtr.convtr", "conv"),
        ("quantizer.rvq_first.vq", "quantizer.semantic_residual_vector_quantizer"),
        ("quantizer.rvq_first", "quantizer.semantic_residual_vector_quantizer"),
        ("quantizer.rvq_rest.vq", "quantizer.acoustic_residual_vector_quantizer"),
        ("quantizer.rvq_rest", "quantizer.acoustic_residual_vector_quantizer"),
        ("_codebook", "codebook"),
        ("_initialized", "initialized"),
        ("embedding_sum", "embed_sum"),
        ("encoder.model", "encoder.layers"),
        ("decoder.model", "decoder.layers"),
        ("encoder_transformer.transformer", "encoder_transformer"),
        ("decoder_transformer.transformer", "decoder_transformer"),
        ("linear1", "mlp.fc1"),
        ("linear2", "mlp.fc2"),
        ("self_attn.out_proj", "self_attn.o_proj"),
        ("norm1", "input_layernorm"),
        ("norm2", "post_attention_layernorm"),
        ("layer_scale_1", "self_attn_layer_scale"),
        ("layer_scale_2", "mlp_layer_scale"),
    ]
    d, heads = MIMI.transformer.d_model, MIMI.transformer.num_heads

    def permute(w: torch.Tensor) -> torch.Tensor:
        return w.view(heads, d // heads // 2, 2, d).transpose(1, 2).reshape(d, d)

    out = {}
    for k, v in state.items():
        for old, new in rules:
            k = k.replace(old, new)
        if k.endswith("in_proj_weight"):
            q, kk, vv = v.chunk(3)
            out[k.replace("in_proj_weight", "q_proj.weight")] = permute(q)
            out[k.replace("in_proj_weight", "k_proj.weight")] = permute(kk)
            out[k.replace("in_proj_weight", "v_proj.weight")] = vv.contiguous()
        else:
            out[k] = v.contiguous()
    return out


def test_every_layout_of_the_same_weights_has_the_same_hash(
    moshi_model: torch.nn.Module, tmp_path: Path
) -> None:
    module_state = moshi_model.state_dict()
    official = _official_names(module_state)
    files = {
        "moshi-module": module_state,
        "kyutai-official": official,
        "hf-release": _release_conversion(official),
        "hf-release-fp16": {k: v.half() for k, v in _release_conversion(official).items()},
    }
    hashes = {}
    for name, state in files.items():
        path = tmp_path / name / "model.safetensors"
        path.parent.mkdir()
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        hashes[name] = load_codec(path=path).weights_hash
    assert hashes["moshi-module"] == hashes["kyutai-official"] == hashes["hf-release"]
    assert hashes["moshi-module"] == weights_hash(official)
    assert hashes["hf-release-fp16"] == weights_hash({k: v.half() for k, v in official.items()})


def test_moshi_parity_offline_and_streaming(
    moshi_model: torch.nn.Module, speech: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "tokenizer.safetensors"
    safetensors.torch.save_file(_official_names(moshi_model.state_dict()), str(path))
    codec = load_codec(path=path)
    x = torch.from_numpy(speech)[None, None]

    with torch.no_grad():
        ref_codes = moshi_model.encode(x)
    enc = codec.encode(speech)
    assert np.array_equal(enc.codes, ref_codes[0].numpy())
    assert len(np.unique(enc.codes[0])) > 10
    assert np.array_equal(codec.encode(speech, levels=8).codes, ref_codes[0, :8].numpy())
    for levels in (8, 32):
        with torch.no_grad():
            ref_audio = moshi_model.decode(ref_codes[:, :levels])[0, 0].numpy()
        assert _rel(codec.decode(enc.codes[:levels]), ref_audio) < AUDIO_TOL

    # Frame by frame: moshi's streaming() is the reference for stateful decoding.
    encoder, decoder = codec.stream_encoder(), codec.stream_decoder()
    ref_frames, our_frames = [], []
    with torch.no_grad(), moshi_model.streaming(1):
        for t in range(STREAM_FRAMES):
            chunk = x[..., t * MIMI.frame_size : (t + 1) * MIMI.frame_size]
            ref_c = moshi_model.encode(chunk)
            ref_frames.append(moshi_model.decode(ref_c)[0, 0].numpy())
            ours = encoder.push(chunk[0, 0].numpy())
            assert np.array_equal(ours.codes, ref_c[0].numpy()), f"frame {t}"
            our_frames.append(decoder.push(ours.codes))
    assert _rel(np.concatenate(our_frames), np.concatenate(ref_frames)) < AUDIO_TOL
