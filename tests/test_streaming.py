"""StreamingSequential threads one state per stateful child; None means a fresh stream."""

from __future__ import annotations

import torch
from torch import nn

from mimirate.models.conv import StreamingConv1d
from mimirate.models.streaming import StreamingLayer, StreamingSequential, param_like


def _stack() -> StreamingSequential:
    torch.manual_seed(0)
    return StreamingSequential(
        StreamingConv1d(2, 4, 5), nn.ELU(), StreamingConv1d(4, 3, 3, dilation=2)
    )


def test_state_has_one_entry_per_child_and_none_for_stateless() -> None:
    state = _stack().init_state(3)
    assert len(state) == 3 and state[1] is None
    assert state[0].previous.shape == (3, 2, 4)
    assert state[2].previous.shape == (3, 4, 4)


def test_chunked_equals_offline_and_is_causal() -> None:
    stack = _stack()
    x = torch.randn(2, 2, 40)
    with torch.no_grad():
        full = stack(x)
        state = stack.init_state(2)
        parts = [stack(x[..., a:b], state) for a, b in ((0, 3), (3, 4), (4, 21), (21, 40))]
        assert torch.allclose(torch.cat(parts, -1), full, atol=1e-6)
        # More input later never changes what was already produced.
        assert torch.allclose(stack(x[..., :17]), full[..., :17], atol=1e-6)


def test_protocol_and_param_like() -> None:
    conv = StreamingConv1d(1, 1, 3)
    assert isinstance(conv, StreamingLayer)
    assert not isinstance(nn.ELU(), StreamingLayer)
    assert param_like(conv).dtype == torch.float32
