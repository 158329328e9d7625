"""Causal sliding-window transformer: equals a direct masked implementation, streams exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mimirate.config import TransformerConfig
from mimirate.models.transformer import LatentTransformer, StreamingTransformer, rope_tables

CFG = TransformerConfig(d_model=16, num_heads=2, num_layers=2, dim_feedforward=32, context=6)


def _model() -> StreamingTransformer:
    torch.manual_seed(0)
    model = StreamingTransformer(CFG)
    with torch.no_grad():
        for layer in model.layers:  # make the residual branches matter
            layer.layer_scale_1.scale.fill_(0.5)
            layer.layer_scale_2.scale.fill_(0.5)
    return model


def _direct(model: StreamingTransformer, x: torch.Tensor) -> torch.Tensor:
    """The same function written plainly: full sequence, explicit window mask."""
    B, T, C = x.shape
    H, D = CFG.num_heads, CFG.head_dim
    pos = torch.arange(T)
    freqs = torch.exp(torch.arange(D // 2).float() * (-math.log(CFG.max_period) * 2 / D))
    ang = pos[:, None].float() * freqs
    delta = pos[:, None] - pos[None, :]
    mask = (delta >= 0) & (delta < CFG.context)

    def rot(t: torch.Tensor) -> torch.Tensor:
        a, b = t[..., 0::2], t[..., 1::2]
        out = torch.empty_like(t)
        out[..., 0::2] = a * ang.cos() - b * ang.sin()
        out[..., 1::2] = a * ang.sin() + b * ang.cos()
        return out

    for layer in model.layers:
        h = layer.norm1(x)
        q, k, v = F.linear(h, layer.self_attn.in_proj_weight).split(C, dim=-1)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
        att = (rot(q) @ rot(k).transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        a = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + layer.layer_scale_1.scale * layer.self_attn.out_proj(a)
        ff = layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
        x = x + layer.layer_scale_2.scale * ff
    return x


def test_offline_matches_direct_implementation_beyond_the_context() -> None:
    model = _model()
    x = torch.randn(2, 20, CFG.d_model)
    with torch.no_grad():
        assert torch.allclose(model(x), _direct(model, x), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_chunkings_equal_offline_and_memory_is_bounded(seed: int) -> None:
    model = _model()
    rng = np.random.default_rng(seed)
    x = torch.randn(1, 30, CFG.d_model)
    with torch.no_grad():
        full = model(x)
        state = model.init_state(1, step_capacity=2)
        sizes = [c.shape for c in state.caches[0].__dict__.values()]
        outs, pos = [], 0
        while pos < 30:
            n = int(rng.integers(1, 9))
            outs.append(model(x[:, pos : pos + n], state))
            pos += n
        assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
        assert [c.shape for c in state.caches[0].__dict__.values()] == sizes
        assert state.offset == 30


def test_causal() -> None:
    model = _model()
    x = torch.randn(1, 15, CFG.d_model)
    with torch.no_grad():
        assert torch.allclose(model(x[:, :9]), model(x)[:, :9], atol=1e-6)


def test_rope_tables_rotate_by_position() -> None:
    cos, sin = rope_tables(torch.tensor([0, 3]), 8, 10_000.0)
    assert torch.equal(cos[0], torch.ones(4)) and torch.equal(sin[0], torch.zeros(4))
    assert torch.isclose(cos[1, 0], torch.cos(torch.tensor(3.0)))


def test_latent_transformer_uses_conv_layout_and_checkpoint_names() -> None:
    model = LatentTransformer(CFG)
    keys = set(model.state_dict())
    assert "transformer.layers.0.self_attn.in_proj_weight" in keys
    assert "transformer.layers.1.layer_scale_2.scale" in keys
    assert model(torch.randn(1, CFG.d_model, 5)).shape == (1, CFG.d_model, 5)


def test_streams_at_different_positions_step_together() -> None:
    # Two streams that started 5 steps apart (context 6, so the ring wraps), stacked
    # along the batch, give each stream's own result.
    from mimirate.models.streaming import stack_states, unstack_states

    model = _model()
    x = torch.randn(2, 14, CFG.d_model)
    with torch.no_grad():
        alone = [model(x[i : i + 1]) for i in range(2)]
        a, b = model.init_state(1), model.init_state(1)
        model(x[:1, :5], a)
        outs = []
        for t in range(9):
            stacked = stack_states([a, b])
            outs.append(model(torch.stack([x[0, 5 + t], x[1, t]])[:, None], stacked))
            unstack_states(stacked, [a, b])
        out = torch.cat(outs, dim=1)
    assert a.offset == 14 and b.offset == 9
    assert torch.allclose(out[0], alone[0][0, 5:], atol=1e-5)
    assert torch.allclose(out[1], alone[1][0, :9], atol=1e-5)
