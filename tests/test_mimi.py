"""MimiModel: checkpoint layout, nested codes, per-frame levels, streaming == offline, training."""

from __future__ import annotations

import copy

import pytest
import torch

from mimirate.config import MIMI, TINY
from mimirate.models import mimi
from mimirate.models.mimi import MimiModel

FS = TINY.frame_size


@pytest.fixture(scope="module")
def model() -> MimiModel:
    """The tiny preset with codebooks set by k-means, as at the start of training."""
    torch.manual_seed(0)
    m = MimiModel(TINY).train()
    with torch.no_grad():
        for i in range(TINY.quantizer.n_q):  # k-means takes one level per call (new batch)
            m(_speechlike(4, batch=4, seed=100 + i))
    return m.eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: a second thread only adds contention on the shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _speechlike(n_frames: int, batch: int = 1, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_frames * FS) / TINY.sample_rate
    f0 = 120 + 80 * torch.rand(batch, 1, 1, generator=g)
    tone = torch.sin(2 * torch.pi * f0 * t) * torch.sin(2 * torch.pi * 3 * t)
    return (0.3 * tone + 0.05 * torch.randn(batch, 1, t.numel(), generator=g)).float()


def test_state_dict_matches_the_reference_layout() -> None:
    ours = {k: tuple(v.shape) for k, v in MimiModel(MIMI).state_dict().items()}
    assert len(ours) == 318
    loaders = pytest.importorskip("moshi.models.loaders")
    ref = loaders.get_mimi(None, device="cpu").state_dict()
    # moshi's modules split the attention projections; its loader maps the file's names.
    names = {
        k.replace("in_projs.0.weight", "in_proj_weight").replace(
            "out_projs.0.weight", "out_proj.weight"
        ): tuple(v.shape)
        for k, v in ref.items()
    }
    assert names == ours


def test_codes_are_nested(model: MimiModel) -> None:
    x = _speechlike(6, batch=2)
    with torch.no_grad():
        full = model.encode(x)
        assert full.codes.shape == (2, 32, 6) and full.latent_error.shape == (2, 32, 6)
        for k in (1, 8, 17):
            assert torch.equal(model.encode(x, k).codes, full.codes[:, :k])


def test_latent_error_never_increases_when_zero_is_a_centroid(model: MimiModel) -> None:
    # Set up what training converges to: projections that are each other's transpose
    # (orthonormal), so the latent error is a constant plus the squared RVQ residual.
    # With zero in every acoustic codebook the nearest centroid never leaves a larger
    # residual, so the error must fall level by level. (The semantic output, not yet
    # complementary in an untrained model, is switched off.)
    m = copy.deepcopy(model)
    x = _speechlike(6, batch=2, seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.quantizer.rvq_first.output_proj.weight.zero_()
        rest = m.quantizer.rvq_rest
        basis, _ = torch.linalg.qr(torch.randn(rest.output_proj.weight.shape[:2], generator=g))
        rest.output_proj.weight.copy_(basis[:, :, None])
        rest.input_proj.weight.copy_(basis.T[:, :, None])
        latent = m.encode_latent_step(x, m.init_encoder_state(2))
        scale = float(torch.nn.functional.conv1d(latent, rest.input_proj.weight).std())
        for j in range(rest.n_levels):
            book = rest.codebook(j)
            centroids = torch.randn(book.embedding_sum.shape, generator=g) * scale * 0.8**j
            centroids[0] = 0
            book.embedding_sum.copy_(centroids)
            book.cluster_usage.fill_(1)
        err = m.encode(x).latent_error
    assert bool((err[:, 2:] <= err[:, 1:-1] * (1 + 1e-5) + 1e-6).all())
    mean = err.mean(dim=(0, 2))
    assert float(mean[-1]) < float(mean[1]) - 1e-3


def test_per_frame_levels_decode_equals_prefix_decode(model: MimiModel) -> None:
    codes = model.encode(_speechlike(5)).codes
    with torch.no_grad():
        for k in (1, 4, 32):
            levels = torch.full((1, 5), k)
            assert torch.equal(model.decode(codes, levels), model.decode(codes[:, :k]))
        mixed = model.decode(codes[:, :8], torch.tensor([[8, 8, 3, 3, 3]]))
        assert mixed.shape == (1, 1, 5 * FS)
        # Frames decoded at 8 levels before the switch are those of the 8-level decode.
        assert torch.equal(mixed[..., : 2 * FS], model.decode(codes[:, :8])[..., : 2 * FS])


def test_streaming_odd_chunks_equals_offline(model: MimiModel) -> None:
    x = _speechlike(9)
    with torch.no_grad():
        ref = model.encode(x)
        audio = model.decode(ref.codes)
        es = model.init_encoder_state(1)
        codes, pos = [], 0
        for n in (1, 3, 1, 2, 2):
            r = model.encode_step(x[..., pos : pos + n * FS], es)
            codes.append(r.codes)
            pos += n * FS
    codes = torch.cat(codes, -1)
    # Streaming and offline differ by float rounding (~1e-7); with untrained codebooks
    # the deepest levels hold near-ties that such noise can flip, the first ones never.
    assert torch.equal(codes[:, :16], ref.codes[:, :16])
    assert float((codes == ref.codes).float().mean()) > 0.97
    with torch.no_grad():
        restream = model.init_decoder_state(1)
        outs = [
            model.decode_step(ref.codes[..., i : i + 2], None, restream) for i in (0, 2, 4, 6, 8)
        ]
    assert torch.allclose(torch.cat(outs, -1), audio, atol=1e-5)


def test_offline_steps_do_not_change_the_result(
    model: MimiModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _speechlike(9)
    with torch.no_grad():
        whole = model.encode(x)
        audio = model.decode(whole.codes)
        monkeypatch.setattr(mimi, "OFFLINE_CHUNK_FRAMES", 2)  # 5 steps, the last of 1 frame
        stepped = model.encode(x)
        restepped = model.decode(whole.codes)
    assert torch.equal(stepped.codes[:, :16], whole.codes[:, :16])
    assert float((stepped.codes == whole.codes).float().mean()) > 0.97
    assert torch.allclose(restepped, audio, atol=1e-5)


def test_seanet_tiles_shrink_with_the_batch_on_the_cpu(
    model: MimiModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _speechlike(8, batch=3)
    with torch.no_grad():
        alone = [model.encode(x[b : b + 1]).codes for b in range(3)]
        audio = model.decode(torch.cat(alone))
        monkeypatch.setattr(mimi, "SEANET_TILE_FRAMES", 6)  # 2 frames a stream for 3
        widths: list[int] = []
        hook = model.encoder.register_forward_pre_hook(lambda m, a: widths.append(a[0].shape[-1]))
        try:
            batched = model.encode(x).codes
        finally:
            hook.remove()
        redecoded = model.decode(torch.cat(alone))
    assert widths == [2 * FS] * 4  # 8 frames in tiles of 6 // 3 frames
    # Tiling is exact streaming: each stream's codes as if encoded alone (up to rounding
    # at near-ties of the tiny model's deepest levels, as in the test above).
    assert torch.equal(batched[:, :16], torch.cat(alone)[:, :16])
    assert torch.allclose(redecoded, audio, atol=1e-5)


def test_training_gradients_do_not_depend_on_seanet_tiles(
    model: MimiModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Streaming states hold their inputs detached: tiles under autograd would cut the
    # gradient at every tile boundary (a crop longer than a tile, or a batch of them).
    x = _speechlike(6, batch=2)

    def grads() -> list[torch.Tensor]:
        m = copy.deepcopy(model).train()
        m.zero_grad()
        m(x, levels=4).audio.pow(2).mean().backward()
        return [p.grad.clone() for p in m.encoder.parameters() if p.grad is not None]

    whole = grads()
    monkeypatch.setattr(mimi, "SEANET_TILE_FRAMES", 2)
    tiled = grads()
    assert len(whole) == len(tiled) > 0
    for a, b in zip(whole, tiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_encode_is_causal(model: MimiModel) -> None:
    x = _speechlike(6)
    with torch.no_grad():
        head = model.encode(x[..., : 3 * FS]).codes
        full = model.encode(x).codes[..., :3]
    assert torch.equal(head[:, :16], full[:, :16])


def test_step_rejects_partial_frames(model: MimiModel) -> None:
    with pytest.raises(ValueError, match="whole frames"):
        model.encode_step(torch.zeros(1, 1, FS + 1), model.init_encoder_state(1))


def test_training_forward_is_the_streaming_function(model: MimiModel) -> None:
    x = _speechlike(4, batch=2)[..., : 4 * FS - 100]
    with torch.no_grad():
        out = model(x)
        codes = model.encode(x).codes
        audio = model.decode(codes)[..., : x.shape[-1]]
    assert torch.equal(out.codes, codes)
    assert out.audio.shape == x.shape
    assert torch.allclose(out.audio, audio, atol=1e-5)
    assert out.latent.shape == (2, TINY.seanet.dimension, 4)
    assert out.perplexity.shape == (32,)


def test_training_forward_levels_and_continuous_latent() -> None:
    torch.manual_seed(0)
    m = MimiModel(TINY).train()
    x = _speechlike(3, batch=2).requires_grad_(True)
    levels = torch.tensor([[1, 5, 32], [2, 2, 9]])
    out = m(x, levels)
    (out.audio.pow(2).mean() + out.commitment_loss).backward()
    assert x.grad is not None and m.encoder.model[0].layer.weight.grad is not None
    cont = m(x.detach(), 4, quantize=False)
    assert cont.audio.shape == x.shape
    with pytest.raises(ValueError, match="levels"):
        m(x.detach(), torch.zeros(2, 3, dtype=torch.long))


def test_training_forward_runs_under_bfloat16_autocast(model: MimiModel) -> None:
    # What a GPU run does (torch.autocast("cuda", torch.bfloat16)), through the CPU's
    # autocast: the transformers' float32 key rings take bfloat16 keys, the quantizer
    # searches in float32 whatever the autocast (in bfloat16, 12 % of the packaged model's
    # codes at 8 levels differ from float32's on the same latent), and the SEANet decoder
    # runs in float32 too (its bfloat16 noise fills the quiet parts the mel loss weighs).
    model = copy.deepcopy(model).eval()
    x = torch.randn(2, 1, 3 * FS, generator=torch.Generator().manual_seed(3)) * 0.1
    levels = torch.full((2, 3), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, levels=levels)
    assert out.latent.dtype == torch.bfloat16 and out.audio.dtype == torch.float32
    assert torch.equal(out.codes, model.quantizer(out.latent.float(), levels).codes)
    out.audio.float().pow(2).mean().backward()  # gradients reach the encoder through it all
    assert model.encoder.model[0].conv.conv.weight.grad is not None
