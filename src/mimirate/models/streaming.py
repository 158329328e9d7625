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
