"""Causal transformer with RoPE and a sliding-window context, streaming with a ring KV cache.

Every query attends to the ``context`` most recent positions, itself included. The
streaming state keeps keys and values in a preallocated ring buffer of
``context - 1 + step_capacity`` slots, so memory is bounded however long the stream
and a step of up to ``step_capacity`` positions writes in place. Longer chunks (the
offline case) attend to the cached past plus the chunk, which gives the same function.

Parameter names follow the released Mimi checkpoint
(``transformer.layers.N.self_attn.in_proj_weight`` with q, k, v stacked, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mimirate.config import TransformerConfig
from mimirate.models.kernels import linear
from mimirate.models.streaming import param_like


@dataclass
class KVCache:
    """``keys``, ``values``: ``[B, H, slots, head_dim]`` ring buffers for one layer."""

    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class TransformerState:
    """Streaming state of a whole transformer.

    Every stream of the batch keeps its own positions, so streams that started at
    different times can be stacked along the batch dimension and stepped together (a
    stream's ring slot for position ``p`` is ``p % slots``; attention does not care
    where a key sits in the ring, only the mask built from ``positions`` does).

    Attributes:
        positions: ``[B, slots]`` long, the stream position held in each ring slot
            (-1: empty).
        offsets: ``[B]`` long, position of each stream's next input step.
        caches: one :class:`KVCache` per layer.
    """

    positions: torch.Tensor
    offsets: torch.Tensor
    caches: list[KVCache]

    @property
    def slots(self) -> int:
        return int(self.positions.shape[-1])

    @property
    def offset(self) -> int:
        """The next position, when every stream of the batch is at the same one."""
        first = int(self.offsets[0]) if self.offsets.numel() else 0
        if bool((self.offsets != first).any()):
            raise ValueError("the streams of this state are at different positions")
        return first


class LayerScale(nn.Module):
    """Per-channel learnt scale of a residual branch, ``[..., C]``."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def rope_tables(
    positions: torch.Tensor, head_dim: int, max_period: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[..., T, head_dim / 2]`` for ``positions [..., T]``, in float32.

    The arithmetic follows the reference (frequencies ``exp(-2i log(max_period) / D)``)
    so that rotated queries and keys are bit-identical to it.
    """
    ds = torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(max_period) * 2 / head_dim))
    angles = freqs * positions.float().unsqueeze(-1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` of ``x [..., T, D]`` (e.g. ``[B, H, T, D]``).

    ``cos`` and ``sin`` broadcast against ``[..., T, D / 2]``.
    """
    *lead, T, D = x.shape
    pairs = x.view(*lead, T, D // 2, 2)
    xr, xi = pairs[..., 0].float(), pairs[..., 1].float()
    out_r = xr * cos - xi * sin
    out_i = xr * sin + xi * cos
    return torch.stack([out_r.to(x.dtype), out_i.to(x.dtype)], dim=-1).view(x.shape)


@dataclass(frozen=True)
class _StepPlan:
    """How one step uses the ring, shared by all layers (they advance in lockstep).

    Attributes:
        mask: ``[B, 1, T, keys]`` True where a query may attend.
        in_place: write the new keys into ``slots`` first, then attend over the ring
            alone (a short streaming step); else attend over the cached past (when
            ``past``) followed by the new keys, then write the last ``keep`` new keys.
        slots: ``[B, 1, keep, 1]`` long, each stream's ring slots to write.
    """

    mask: torch.Tensor
    in_place: bool
    past: bool
    slots: torch.Tensor
    keep: int

    def write(self, ring: torch.Tensor, new: torch.Tensor) -> None:
        """Store ``new [B, H, keep, D]`` into ``ring [B, H, slots, D]`` at this step's slots."""
        # Under autocast the new keys come out of a bfloat16 product, the ring is float32.
        ring.scatter_(2, self.slots.expand_as(new), new.detach().to(ring.dtype))


class MultiheadSelfAttention(nn.Module):
    """Causal multi-head self-attention over a sliding window, no biases."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        # q, k and v stacked in one matrix, as in the released checkpoint.
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        plan: _StepPlan,
    ) -> torch.Tensor:
        """``[B, T, C] -> [B, T, C]``; writes this step's keys and values into ``cache``."""
        B, T, C = x.shape
        H = self.num_heads
        qkv = linear(x, self.in_proj_weight).view(B, T, 3, H, C // H)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        # Queries and keys rotated in one call: a streaming step is a few hundred tiny
        # ops, and their count, not their arithmetic, is its cost.
        q, k = apply_rope(qkv[:2], cos, sin)
        v = qkv[2]
        if plan.in_place:
            plan.write(cache.keys, k)
            plan.write(cache.values, v)
            keys, values = cache.keys, cache.values
        elif plan.past:
            keys = torch.cat([cache.keys, k], dim=2)
            values = torch.cat([cache.values, v], dim=2)
        else:
            keys, values = k, v
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=plan.mask)
        if not plan.in_place:
            plan.write(cache.keys, k[:, :, T - plan.keep :])
            plan.write(cache.values, v[:, :, T - plan.keep :])
        return linear(out.transpose(1, 2).reshape(B, T, C), self.out_proj.weight)


class TransformerLayer(nn.Module):
    """Pre-norm layer: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(ff(norm2(x)))``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = MultiheadSelfAttention(d, cfg.num_heads)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d, bias=False)
        self.layer_scale_1 = LayerScale(d, cfg.layer_scale)
        self.layer_scale_2 = LayerScale(d, cfg.layer_scale)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        plan: _StepPlan,
    ) -> torch.Tensor:
        """``[B, T, C] -> [B, T, C]``."""
        x = x + self.layer_scale_1(self.self_attn(self.norm1(x), cos, sin, cache, plan))
        update = linear(F.gelu(linear(self.norm2(x), self.linear1.weight)), self.linear2.weight)
        return x + self.layer_scale_2(update)


class StreamingTransformer(nn.Module):
    """A stack of :class:`TransformerLayer` on ``[B, T, C]`` with a shared position plan."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.num_heads or cfg.head_dim % 2:
            raise ValueError("d_model must split into heads of an even size (RoPE rotates pairs)")
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))

    def init_state(self, batch_size: int, step_capacity: int = 2) -> TransformerState:
        """A fresh state; steps of up to ``step_capacity`` positions write the ring in place."""
        p = param_like(self)
        cfg = self.cfg
        slots = cfg.context - 1 + step_capacity
        shape = (batch_size, cfg.num_heads, slots, cfg.head_dim)
        caches = [
            KVCache(
                torch.zeros(shape, device=p.device, dtype=p.dtype),
                torch.zeros(shape, device=p.device, dtype=p.dtype),
            )
            for _ in self.layers
        ]
        positions = torch.full((batch_size, slots), -1, dtype=torch.long, device=p.device)
        offsets = torch.zeros(batch_size, dtype=torch.long, device=p.device)
        return TransformerState(positions, offsets, caches)

    def _plan(self, state: TransformerState, T: int, new: torch.Tensor) -> _StepPlan:
        """The ring use of a step whose positions are ``new [B, T]``; updates ``positions``."""
        context, slots = self.cfg.context, state.slots
        in_place = slots - (context - 1) >= T
        keep = T if in_place else min(T, slots)
        kept = new[:, T - keep :]
        where = kept % slots
        past = not in_place and bool((state.offsets > 0).any())
        if in_place:
            state.positions.scatter_(1, where, kept)
            key_pos = state.positions
        elif past:
            key_pos = torch.cat([state.positions, new], dim=1)
        else:
            key_pos = new
        delta = new[:, :, None] - key_pos[:, None, :]
        mask = (key_pos[:, None, :] >= 0) & (delta >= 0) & (delta < context)
        if not in_place:
            state.positions.scatter_(1, where, kept)
        return _StepPlan(mask[:, None], in_place, past, where[:, None, :, None], keep)

    def forward(self, x: torch.Tensor, state: TransformerState | None = None) -> torch.Tensor:
        """``[B, T, C] -> [B, T, C]``; advances ``state`` by ``T`` positions."""
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B)
        positions = state.offsets[:, None] + torch.arange(T, device=x.device)  # [B, T]
        plan = self._plan(state, T, positions)
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.max_period)
        cos, sin = cos[:, None], sin[:, None]  # one table per stream, shared by the heads
        for layer, cache in zip(self.layers, state.caches, strict=True):
            x = layer(x, cos, sin, cache, plan)
        state.offsets += T
        return x


class LatentTransformer(nn.Module):
    """The transformer applied to a SEANet latent in conv layout ``[B, C, T]``.

    (Input and output projections would sit here when the latent and model widths
    differ; Mimi's are equal, so there are none.)
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.transformer = StreamingTransformer(cfg)

    def init_state(self, batch_size: int, step_capacity: int = 2) -> TransformerState:
        return self.transformer.init_state(batch_size, step_capacity)

    def forward(self, x: torch.Tensor, state: TransformerState | None = None) -> torch.Tensor:
        """``[B, C, T] -> [B, C, T]``."""
        return self.transformer(x.transpose(1, 2), state).transpose(1, 2)
