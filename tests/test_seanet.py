"""SEANet encoder/decoder: shapes, layer layout, causality and chunked == offline."""

from __future__ import annotations

import torch

from mimirate.config import MIMI, TINY
from mimirate.models.seanet import SEANetDecoder, SEANetEncoder

CFG = TINY.seanet


def test_shapes_and_hop() -> None:
    torch.manual_seed(0)
    enc, dec = SEANetEncoder(CFG), SEANetDecoder(CFG)
    x = torch.randn(2, 1, 3 * CFG.hop_length)
    with torch.no_grad():
        z = enc(x)
        assert z.shape == (2, CFG.dimension, 3)
        assert dec(z).shape == (2, 1, 3 * CFG.hop_length)


def test_layer_indices_follow_the_checkpoint_layout() -> None:
    keys = set(SEANetEncoder(MIMI.seanet).state_dict()) | {
        "dec." + k for k in SEANetDecoder(MIMI.seanet).state_dict()
    }
    assert "model.0.conv.conv.weight" in keys
    assert "model.1.block.1.conv.conv.weight" in keys
    assert "model.12.conv.conv.weight" in keys and "model.14.conv.conv.bias" in keys
    assert "dec.model.2.convtr.convtr.weight" in keys
    assert "dec.model.14.conv.conv.weight" in keys
    enc = SEANetEncoder(MIMI.seanet)
    assert enc.model[12].layer.weight.shape == (1024, 512, 16)


def test_chunked_equals_offline_and_causal() -> None:
    torch.manual_seed(0)
    enc, dec = SEANetEncoder(CFG), SEANetDecoder(CFG)
    hop = CFG.hop_length
    x = torch.randn(1, 1, 7 * hop)
    with torch.no_grad():
        z, y = enc(x), None
        y = dec(z)
        es, ds = enc.init_state(1), dec.init_state(1)
        zs, ys, pos = [], [], 0
        for n in (1, 2, 1, 3):
            zs.append(enc(x[..., pos : pos + n * hop], es))
            ys.append(dec(zs[-1], ds))
            pos += n * hop
        assert torch.allclose(torch.cat(zs, -1), z, atol=1e-5)
        assert torch.allclose(torch.cat(ys, -1), y, atol=1e-5)
        assert torch.allclose(enc(x[..., : 3 * hop]), z[..., :3], atol=1e-5)
        assert torch.allclose(dec(z[..., :2]), y[..., : 2 * hop], atol=1e-5)
