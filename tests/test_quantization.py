"""Split RVQ: exact nearest search, prefix codes, per-frame level masks, latent error, training."""

from __future__ import annotations

import itertools

import pytest
import torch

from mimirate.config import QuantizerConfig
from mimirate.models.quantization import (
    EuclideanCodebook,
    SplitResidualVectorQuantizer,
    _repeated_rows,
)

CFG = QuantizerConfig(n_q=6, n_q_semantic=1, bins=32, dimension=4)
C = 8


def _quantizer() -> SplitResidualVectorQuantizer:
    torch.manual_seed(0)
    q = SplitResidualVectorQuantizer(CFG, C)
    with torch.no_grad():
        for rvq in (q.rvq_first, q.rvq_rest):
            for j in range(rvq.n_levels):
                book = rvq.codebook(j)
                book.embedding_sum.copy_(torch.randn(CFG.bins, CFG.dimension) / (j + 1))
                book._initialized.fill_(1)
    return q


def test_nearest_is_cdist_argmin_bit_for_bit() -> None:
    torch.manual_seed(0)
    book = EuclideanCodebook(16, 256, 0.99, 0.1)
    book.embedding_sum.copy_(torch.randn(256, 16))
    book.cluster_usage.copy_(torch.rand(256) + 0.5)
    x = torch.randn(40, 16)
    ref = torch.cdist(x[None], book.centroids[None])[0].argmin(-1)
    assert torch.equal(book.nearest(x), ref)


def test_one_row_search_is_cdist_argmin_bit_for_bit_even_at_rounding_ties() -> None:
    torch.manual_seed(0)
    dim, bins = 32, 512
    book = EuclideanCodebook(dim, bins, 0.99, 0.1)
    table = torch.randn(bins, dim)
    xs = torch.randn(100, dim)
    # Each x nearest to two centroids at exactly the same distance (the same offsets,
    # permuted): which is "nearer" is decided by rounding alone.
    for i in range(100):
        offset = 0.05 * torch.randn(dim)
        table[2 * i] = xs[i] + offset
        table[2 * i + 1] = xs[i] + offset[torch.randperm(dim)]
    book.embedding_sum.copy_(table)
    book.eval()
    fast_differs = 0
    for i in range(100):
        x = xs[i : i + 1]
        ref = torch.cdist(x[None], book.centroids[None])[0].argmin(-1)
        assert torch.equal(book.nearest(x), ref)  # a streaming frame: one row
        norm = x.pow(2).sum(-1, keepdim=True)
        rows = torch.cat([-2 * x, norm, torch.ones_like(norm)], -1)
        fast = torch.mm(book._search, torch.cat([rows, rows]).t())[:, 0]
        fast_differs += int(fast.clamp_min(0).sqrt().argmin() != ref[0])
    assert fast_differs > 0  # the fast product alone would have got some wrong
    # Clear winners are the fast product's to decide.
    clear = table[200:210] + 1e-3
    norm = clear.pow(2).sum(-1, keepdim=True)
    rows = torch.cat([-2 * clear, norm, torch.ones_like(norm)], -1)
    for j in range(10):
        assert book._fast_nearest(rows[j : j + 1], norm[j : j + 1]).tolist() == [200 + j]


def test_a_repeated_centroid_answers_as_its_first_entry_in_inference() -> None:
    torch.manual_seed(0)
    book = EuclideanCodebook(8, 64, 0.99, 0.1)
    table = torch.randn(64, 8)
    table[[9, 30, 47, 63]] = table[5].clone()  # one centroid held by five entries
    book.embedding_sum.copy_(table)
    x = table[5] + 1e-3 * torch.randn(50, 8)  # all nearest to that centroid
    book.eval()
    for rows in (1, 2, 7, 50):  # the streaming (weight-major) and the batch products
        assert book.nearest(x[:rows]).tolist() == [5] * rows
    # Any other input still finds its own centroid.
    assert book.nearest(table[[3, 40]] + 1e-4).tolist() == [3, 40]
    # Training searches the plain table (no exact-duplicate pass on every EMA step).
    book.train()
    book.nearest(x[:1])
    assert torch.isfinite(book._search).all()


def test_repeated_rows_are_every_row_equal_to_an_earlier_one() -> None:
    def by_sorting(rows: torch.Tensor) -> torch.Tensor:  # the whole-row sort it shortcuts
        n = rows.shape[0]
        _, group = torch.unique(rows, dim=0, return_inverse=True)
        index = torch.arange(n)
        first = torch.full((n,), n).scatter_reduce_(0, group, index, "amin")
        return first[group] != index

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n, d = (
            int(torch.randint(1, 200, (1,), generator=g)),
            int(torch.randint(1, 12, (1,), generator=g)),
        )
        rows = torch.randn(n, d, generator=g)
        if trial % 2:  # first values shared by rows that differ further on
            rows[:, 0] = torch.randint(0, 3, (n,), generator=g).float()
        k = int(torch.randint(0, n, (1,), generator=g))
        src, dst = torch.randint(0, n, (k,), generator=g), torch.randint(0, n, (k,), generator=g)
        rows[dst] = rows[src].clone()
        for dtype in (torch.float32, torch.bfloat16):
            assert torch.equal(_repeated_rows(rows.to(dtype)), by_sorting(rows.to(dtype)))


def test_dead_codes_get_distinct_samples() -> None:
    torch.manual_seed(0)
    book = EuclideanCodebook(4, 64, 0.99, 0.5)
    book.embedding_sum.copy_(torch.randn(64, 4))
    usage = torch.full((64,), 0.01)
    alive = torch.arange(0, 64, 3)  # 22 alive, 42 dead
    usage[alive] = 10.0
    book.cluster_usage.copy_(usage)
    before = book.embedding_sum.clone()
    samples = torch.randn(10, 4) + 100.0  # fewer samples than dead codes
    with torch.no_grad():
        book._replace_dead(samples)
    replaced = (book.embedding_sum != before).any(-1)
    assert not replaced[alive].any()
    assert int(replaced.sum()) == 10  # one dead code per sample, the rest wait
    centroids = book.centroids[replaced]
    # Each sample exactly once (the reference's draw with replacement copies some).
    assert torch.allclose(centroids[torch.cdist(centroids, samples).argmin(0)], samples)
    assert torch.unique(centroids, dim=0).shape[0] == 10
    # With more samples than dead codes every dead code gets one, all distinct.
    with torch.no_grad():
        book._replace_dead(torch.randn(500, 4) - 100.0)
    assert torch.unique(book.centroids, dim=0).shape[0] == 64


def test_centroid_cache_follows_buffer_changes() -> None:
    book = EuclideanCodebook(2, 4, 0.99, 0.1)
    assert torch.equal(book.centroids, torch.zeros(4, 2))
    book.load_state_dict({**book.state_dict(), "embedding_sum": torch.ones(4, 2)})
    assert torch.equal(book.centroids, torch.ones(4, 2))


def test_decode_gathers_all_levels_from_one_table_that_follows_the_codebooks() -> None:
    q = _quantizer()
    rvq = q.rvq_rest
    codes = torch.randint(0, CFG.bins, (2, rvq.n_levels, 3))

    def by_level() -> torch.Tensor:  # the plain sum of each level's centroids, projected
        parts = [rvq.codebook(j).lookup(codes[:, j]).transpose(1, 2) for j in range(codes.shape[1])]
        return torch.nn.functional.conv1d(sum(parts), rvq.output_proj.weight)

    with torch.no_grad():
        torch.testing.assert_close(rvq.decode(codes, None), by_level())
        # The levels' own tables are rows of the stack: no second copy in memory.
        stack = rvq._tables()
        for j in range(rvq.n_levels):
            assert rvq.codebook(j)._search.data_ptr() == stack[j].data_ptr()
        # A codebook that changes (an EMA step, a load) is seen by the next decode.
        rvq.codebook(2).embedding_sum.mul_(3.0)
        torch.testing.assert_close(rvq.decode(codes, None), by_level())
        assert not torch.allclose(rvq.decode(codes, None), rvq.decode(codes[:, :2], None))


def test_codes_are_nested_and_latent_error_is_exact() -> None:
    q = _quantizer()
    latent = torch.randn(2, C, 5)
    with torch.no_grad():
        full = q.encode(latent)
        assert full.codes.shape == (2, 6, 5) and full.latent_error.shape == (2, 6, 5)
        for k in (1, 2, 4):
            assert torch.equal(q.encode(latent, k).codes, full.codes[:, :k])
        # The error is measured where the decoder sees it: against the latent projected
        # in and back out without quantization.
        continuous = q.rvq_first.project(latent) + q.rvq_rest.project(latent)
        for k in range(1, 7):
            recon = q.decode(full.codes[:, :k])
            direct = (continuous - recon).pow(2).sum(1)
            assert torch.allclose(full.latent_error[:, k - 1], direct, rtol=1e-4, atol=1e-5)


def test_per_frame_levels_equal_prefix_decodes_exactly() -> None:
    q = _quantizer()
    codes = torch.randint(0, CFG.bins, (2, 6, 4))
    levels = torch.tensor([[1, 2, 6, 3], [6, 1, 1, 4]])
    with torch.no_grad():
        mixed = q.decode(codes, levels)
        for b in range(2):
            for t in range(4):
                k = int(levels[b, t])
                # Masked levels add exact zeros: bit-identical to the k-level decode.
                prefix = q.decode(codes[:, :k])
                assert torch.equal(mixed[b, :, t], prefix[b, :, t])
        assert torch.equal(q.decode(codes, torch.full((2, 4), 6)), q.decode(codes))
        assert torch.equal(q.decode(codes[:, :3], torch.full((2, 4), 3)), q.decode(codes[:, :3]))


def test_training_pass_initialises_learns_and_passes_gradients() -> None:
    torch.manual_seed(0)
    q = SplitResidualVectorQuantizer(CFG, C).train()
    latent = torch.randn(3, C, 20, requires_grad=True)
    levels = torch.full((3, 20), 6)
    for _ in range(CFG.n_q):  # k-means takes one level per call
        out = q(latent, levels)
    assert all(q.rvq_rest.codebook(j).initialized for j in range(5))
    before = q.rvq_rest.codebook(0).embedding_sum.clone()
    out = q(latent, levels)
    assert not torch.equal(before, q.rvq_rest.codebook(0).embedding_sum)
    assert out.quantized.shape == (3, C, 20) and out.codes.shape == (3, 6, 20)
    assert out.perplexity.shape == (6,) and bool((out.perplexity >= 1).all())
    (out.quantized.sum() + out.commitment_loss).backward()
    assert latent.grad is not None and bool(latent.grad.abs().sum() > 0)


def test_training_levels_mask_frames() -> None:
    q = _quantizer().eval()
    latent = torch.randn(1, C, 4)
    levels = torch.tensor([[1, 3, 6, 2]])
    with torch.no_grad():
        out = q(latent, levels)
        expected = q.decode(out.codes, levels)
    assert torch.allclose(out.quantized, expected, atol=1e-5)


def test_encode_rejects_bad_level_count() -> None:
    with pytest.raises(ValueError, match="n_q"):
        _quantizer().encode(torch.zeros(1, C, 2), 7)


def test_fit_sets_every_codebook_by_residual_kmeans() -> None:
    torch.manual_seed(0)
    q = SplitResidualVectorQuantizer(CFG, C)
    frames = torch.randn(2000, C)
    q.fit(frames, iters=10, usage_total=100.0)
    for rvq in (q.rvq_first, q.rvq_rest):
        for j in range(rvq.n_levels):
            book = rvq.codebook(j)
            assert book.initialized
            # Usage rescaled to one batch's worth, so EMA steps can move the centroids.
            assert float(book.cluster_usage.sum()) == pytest.approx(100.0, rel=1e-4)
    with torch.no_grad():
        enc = q.encode(frames.T[None], CFG.n_q)
    codes = enc.codes[0, 0]
    # k-means centroids are all in use on the data they were fitted to.
    assert len(torch.unique(codes)) > 0.8 * CFG.bins
    # Every added level lowers the residual it leaves (in the quantizer's own space).
    rvq = q.rvq_rest
    residual = frames @ rvq.input_proj.weight[:, :, 0].detach().T
    errors = []
    for j in range(rvq.n_levels):
        book = rvq.codebook(j)
        residual = residual - book.lookup(book.nearest(residual))
        errors.append(float(residual.pow(2).mean()))
    assert all(b < a for a, b in itertools.pairwise(errors))


def test_codec_loaded_and_used_under_inference_mode() -> None:
    from mimirate.models.loading import load_codec

    x = (0.1 * torch.sin(torch.arange(3840) * 0.05)).numpy()
    with torch.inference_mode():
        codec = load_codec("tiny", random_init=True, seed=0)
        inside = codec.encode(x).codes
    # Inference tensors have no version counter; the codebook cache must not need one.
    assert (codec.encode(x).codes == inside).all()
    assert codec.decode(inside).shape == (3840,)
