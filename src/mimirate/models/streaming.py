"""Explicit streaming state, shared by every stateful layer of the model.

Streaming is the one code path: a layer's ``forward(x, state)`` consumes the next
chunk of a stream and updates ``state`` in place; ``state=None`` means a fresh
stream, so offline processing is the same call from a fresh state. Weights never
hold per-stream data, so one model serves many concurrent streams, each with its
own state object.

States are small mutable dataclasses of preallocated tensors: updating them in
place keeps memory bounded and avoids per-step allocations. They are detached
from autograd (gradients never flow across chunks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class StreamingLayer(Protocol):
    """A module whose output depends on what came before in the stream."""

    def init_state(self, batch_size: int) -> Any:
        """A fresh state for ``batch_size`` streams, on the module's device and dtype."""
        ...

    def forward(self, x: torch.Tensor, state: Any = None) -> torch.Tensor: ...


def param_like(module: nn.Module) -> torch.Tensor:
    """A parameter or buffer of ``module``, whose device and dtype its states use."""
    for p in module.parameters():
        return p
    for b in module.buffers():
        return b
    raise ValueError(f"{type(module).__name__} has no parameters to take a device from")


class StreamingSequential(nn.Sequential):
    """``nn.Sequential`` that threads one state per stateful child.

    The state is a tuple with one entry per child: the child's own state, or ``None``
    for stateless children (activations), which are called as ``child(x)``.
    """

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        return tuple(
            m.init_state(batch_size) if isinstance(m, StreamingLayer) else None for m in self
        )

    def forward(self, x: torch.Tensor, state: Sequence[Any] | None = None) -> torch.Tensor:
        if state is None:
            state = self.init_state(x.shape[0])
        for module, sub in zip(self, state, strict=True):
            x = module(x) if sub is None else module(x, sub)
        return x


# -- many streams in one call -----------------------------------------------------------
#
# A state is a tree of dataclasses, tuples and lists whose tensor leaves are batch-first
# and whose other leaves (flags such as ``ConvState.started``) describe the stream's
# phase. States with equal phase leaves stack along the batch dimension into one state
# that a single model step advances; the rows are then copied back into each stream's
# own state, so streams keep independent lifetimes (join and leave freely).


def _leaves(state: Any) -> list[Any]:
    if isinstance(state, torch.Tensor) or state is None:
        return [state]
    if isinstance(state, (tuple, list)):
        return [leaf for part in state for leaf in _leaves(part)]
    if is_dataclass(state):
        return [leaf for f in fields(state) for leaf in _leaves(getattr(state, f.name))]
    return [state]


def phase_key(state: Any) -> tuple[Any, ...]:
    """The non-tensor leaves of ``state``: states stack only when their keys are equal."""
    out: list[Any] = []
    _flags(state, out)
    return tuple(out)


def _flags(state: Any, out: list[Any]) -> None:
    # Called for every stream on every batched step: kept lean (no intermediate lists).
    if isinstance(state, torch.Tensor):
        return
    if isinstance(state, (tuple, list)):
        for part in state:
            _flags(part, out)
    elif is_dataclass(state):
        for value in vars(state).values():
            _flags(value, out)
    else:
        out.append(state)


def batch_size_of(state: Any) -> int:
    """Streams in ``state`` (the leading size of its tensors)."""
    for leaf in _leaves(state):
        if isinstance(leaf, torch.Tensor):
            return int(leaf.shape[0])
    raise ValueError("state has no tensors")


def stack_states(states: Sequence[Any]) -> Any:
    """One new state holding ``states`` one after the other along the batch dimension.

    Raises ``ValueError`` when their phases differ (see :func:`phase_key`).
    """
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(states), dim=0)
    if isinstance(first, (tuple, list)):
        return type(first)(stack_states(parts) for parts in zip(*states, strict=True))
    if is_dataclass(first):
        return type(first)(
            **{f.name: stack_states([getattr(s, f.name) for s in states]) for f in fields(first)}
        )
    if any(s != first for s in states):
        raise ValueError("streams in different phases cannot be stacked; group by phase_key")
    return first


def unstack_states(stacked: Any, states: Sequence[Any]) -> None:
    """Copy the rows of ``stacked`` back into ``states`` (in place, as stacked)."""
    sizes = [batch_size_of(s) for s in states]
    _unstack(stacked, list(states), sizes)


def _unstack(stacked: Any, states: list[Any], sizes: list[int]) -> None:
    if isinstance(stacked, torch.Tensor):
        for part, dst in zip(torch.split(stacked, sizes), states, strict=True):
            dst.copy_(part)
    elif isinstance(stacked, (tuple, list)):
        for i, sub in enumerate(stacked):
            _unstack(sub, [s[i] for s in states], sizes)
    elif is_dataclass(stacked):
        for f in fields(stacked):
            value = getattr(stacked, f.name)
            if isinstance(value, (torch.Tensor, tuple, list)) or is_dataclass(value):
                _unstack(value, [getattr(s, f.name) for s in states], sizes)
            else:
                for s in states:
                    setattr(s, f.name, value)


def state_views(stacked: Any, sizes: Sequence[int]) -> list[Any]:
    """Per-stream states whose tensors are row views of ``stacked`` (rows as ``sizes``).

    Layers update states in place, so stepping ``stacked`` advances every view and
    pushing one view alone advances its rows of ``stacked``: no copies either way. Only
    the non-tensor leaves (see :func:`phase_key`) are separate objects per view.
    """
    if isinstance(stacked, torch.Tensor):
        return list(torch.split(stacked, list(sizes)))
    if isinstance(stacked, (tuple, list)):
        parts = [state_views(sub, sizes) for sub in stacked]
        return [type(stacked)(p[i] for p in parts) for i in range(len(sizes))]
    if is_dataclass(stacked):
        parts = {f.name: state_views(getattr(stacked, f.name), sizes) for f in fields(stacked)}
        return [type(stacked)(**{k: v[i] for k, v in parts.items()}) for i in range(len(sizes))]
    return [stacked] * len(sizes)
