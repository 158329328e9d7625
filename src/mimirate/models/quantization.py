"""Split residual vector quantizer with moving-average codebooks.

``rvq_first`` (the "semantic" levels) and ``rvq_rest`` (the acoustic ones) quantize the
SAME latent, each through its own 1x1 input projection; within each, levels are
residual. Their decoded outputs, projected back, are summed. Codebooks are buffers
(``embedding_sum`` / ``cluster_usage``), learnt by exponential moving averages, so
the same module trains and infers. Code 0 is a real centroid.

Nearest-centroid search uses ``torch.cdist``'s formula (with the codebook half
precomputed), so codes are identical to the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mimirate.config import QuantizerConfig
from mimirate.models.kernels import small_columns

#: Floor of ``cluster_usage`` when dividing (as the reference does).
EPSILON = 1e-5
#: Dead codes are looked for every this many training steps.
CHECK_UNUSED_EVERY = 5
#: Usage given to a replaced centroid, relative to the mean usage.
REPLACED_USAGE_RATIO = 1.0
KMEANS_ITERS = 50
#: float32's unit roundoff, 2^-24.
_UNIT_ROUNDOFF = 2.0**-24


def _version(t: torch.Tensor) -> int | None:
    """``t``'s in-place version counter, or None for an inference-mode tensor (it has none)."""
    return None if t.is_inference() else t._version


def _sample_rows(samples: torch.Tensor, num: int) -> torch.Tensor:
    n = samples.shape[0]
    if n >= num:
        idx = torch.randperm(n, device=samples.device)[:num]
    else:
        idx = torch.randint(0, n, (num,), device=samples.device)
    return samples[idx]


def _repeated_rows(rows: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: True where a row of ``rows [N, D]`` equals an earlier row exactly.

    ``torch.unique(dim=0)`` sorts whole rows (3 ms for 2048 x 256, 90 ms to load a
    32-level model), so it runs only on the rows whose first value is shared with
    another row (equal rows share it), usually a few hundred or none.
    """
    n = rows.shape[0]
    repeated = torch.zeros(n, dtype=torch.bool, device=rows.device)
    if n < 2 or rows.shape[1] == 0:
        return repeated
    _, slot, counts = torch.unique(rows[:, 0], return_inverse=True, return_counts=True)
    candidates = torch.nonzero(counts[slot] > 1)[:, 0]
    if candidates.numel() == 0:
        return repeated
    _, group = torch.unique(rows[candidates], dim=0, return_inverse=True)
    first = torch.full_like(candidates, n).scatter_reduce_(0, group, candidates, "amin")
    repeated[candidates] = first[group] != candidates
    return repeated


def _kmeans(
    samples: torch.Tensor, k: int, iters: int = KMEANS_ITERS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids ``[k, D]`` and counts ``[k]`` of ``samples [N, D]``; empty clusters resampled."""
    means = _sample_rows(samples, k)
    counts = torch.ones(k, device=samples.device)
    for _ in range(iters):
        assign = torch.cdist(samples[None], means[None])[0].argmin(-1)
        counts = torch.bincount(assign, minlength=k).to(samples.dtype)
        sums = torch.zeros_like(means).index_add_(0, assign, samples)
        new = sums / counts.clamp(min=1)[:, None]
        means = torch.where((counts == 0)[:, None], _sample_rows(samples, k), new)
    return means, counts.clamp(min=1)


class EuclideanCodebook(nn.Module):
    """One codebook: ``bins`` centroids of ``dim`` values, kept as moving averages.

    Buffers (checkpoint names): ``embedding_sum [bins, dim]``, ``cluster_usage [bins]``,
    ``_initialized [1]``. Centroid ``i`` is ``embedding_sum[i] / max(cluster_usage[i], eps)``.
    """

    def __init__(self, dim: int, bins: int, decay: float, threshold_usage_ratio: float) -> None:
        super().__init__()
        self.dim, self.bins = dim, bins
        self.decay = decay
        self.threshold_usage_ratio = threshold_usage_ratio
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(bins))
        self.register_buffer("embedding_sum", torch.zeros(bins, dim))
        self._steps_to_check = CHECK_UNUSED_EVERY
        self._cache_key: tuple[object, ...] | None = None
        self._init_key: tuple[int | None, int] | None = None
        self._init_value = False
        self._centroids = torch.empty(0)
        self._search = torch.empty(0)
        self._radius = torch.zeros(())  # the largest centroid norm (nearest's rounding bound)
        self._folded = False  # see fold_for_inference

    @property
    def initialized(self) -> bool:
        # Cached on the buffer's version: reading it is a device sync on a GPU.
        flag = self._initialized
        version = _version(flag)
        key = (version, flag.data_ptr())
        if key != self._init_key or version is None:
            self._init_value = bool(flag.item())
            self._init_key = key
        return self._init_value

    def _refresh(self, out: torch.Tensor | None = None) -> None:
        """Rebuild the search table if the buffers changed; into ``out`` ``[bins, dim + 2]``
        when given (a row of the quantizer's stack: no table-sized copy to free)."""
        s, u = self.embedding_sum, self.cluster_usage
        folded = self._folded and s.data_ptr() == self._search.data_ptr()
        if folded and (out is None or out.data_ptr() == s.data_ptr()):
            return  # the buffers are the table (until a move copies them)
        # Recompute the centroids only when the buffers changed (EMA step, load, move).
        key = (
            _version(s),
            _version(u),
            s.data_ptr(),
            u.data_ptr(),
            torch.is_inference_mode_enabled(),
            self.training,
        )
        # Buffers made under torch.inference_mode have no version counter: no cache then.
        if key == self._cache_key and None not in key:
            if out is not None and self._search.data_ptr() != out.data_ptr():
                out.copy_(self._search)
                self._search, self._centroids = out, out[:, : self.dim]
            return
        with torch.no_grad():
            # cdist's formula: distances come from [-2x, |x|^2, 1] . [c, 1, |c|^2]. The
            # table is kept as cdist builds its right operand, [bins, dim + 2]: large
            # batches take the reference's own product with it, and a streaming frame
            # reads it weight-major (``nearest``). The centroids are a view of it: one
            # copy in memory.
            c = torch.div(s, u.clamp(min=EPSILON)[:, None])
            search = s.new_empty(self.bins, self.dim + 2) if out is None else out
            search[:, : self.dim] = c
            search[:, self.dim] = 1
            norms = c.pow(2).sum(-1)
            # A 0-d tensor, not a float: reading it would sync a GPU on every EMA step.
            radius = norms.max().sqrt() if self.bins else norms.new_zeros(())
            if not self.training:
                # A centroid held by several entries (k-means and dead-code replacement
                # copy samples: 3015 of the packaged small model's 65536 entries) answers
                # as its first entry. Left to the product, the entry chosen would depend
                # on rounding, which no BLAS kernel does alike for every row, so the same
                # audio would get other tokens streaming and offline.
                norms[_repeated_rows(c)] = float("inf")
            search[:, self.dim + 1] = norms
        self._search, self._centroids = search, search[:, : self.dim]
        self._radius = radius
        self._cache_key = key

    @property
    def centroids(self) -> torch.Tensor:
        """``[bins, dim]``."""
        self._refresh()
        return self._centroids

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index ``[N]`` of the centroid nearest to each row of ``x`` ``[N, dim]``.

        ``torch.cdist(x[None], centroids[None])`` (its matmul path) followed by argmin,
        to the bit: the same table and the same product (a repeated centroid aside,
        see ``_refresh``). A few rows (streaming) first take a faster product; it
        decides only where no rounding could (see ``_fast_nearest``).
        """
        self._refresh()
        norm = x.pow(2).sum(-1, keepdim=True)
        # -(x + x) is x * -2 to the bit, without wrapping the Python scalar in a tensor
        # (five dispatcher ops: this runs 32 times a frame).
        xs = torch.cat([(x + x).neg_(), norm, norm.new_ones(norm.shape)], dim=-1)
        rows = xs.shape[0]
        if rows and small_columns(xs, rows):
            fast = self._fast_nearest(xs, norm)
            if fast is not None:
                return fast
        dist = torch.mm(xs, self._search.t())
        return dist.clamp_min_(0).sqrt_().argmin(dim=-1)

    def _fast_nearest(self, xs: torch.Tensor, norm: torch.Tensor) -> torch.Tensor | None:
        """``nearest`` through the table weight-major, or None where it might differ.

        MKL runs cdist's one-row product on one core (3.1 ms a frame for mimi's 32
        tables, 67 MB); the same table weight-major with two columns takes both (1.9
        ms), so one row goes in twice. That product rounds otherwise, so its winner is
        taken only when its lead over the runner-up exceeds what rounding can move:
        a dot product of n terms evaluated in any order is within gamma_n * sum|terms|
        of the exact one (Higham, Accuracy and Stability of Numerical Algorithms,
        3.1), and here sum|terms| = |x|^2 + 2 sum|x c| + |c|^2 <= (|x| + |c|)^2. Two
        evaluations of each of two distances: a lead over 4 gamma_n (|x| + max|c|)^2
        cannot be reversed, and a runner-up over 2 gamma_n of it cannot be clamped to
        the winner's 0. Otherwise (2.5-2.7 % of the searches of the bench's audio
        through mimi with random weights) None: the reference product decides.
        """
        rows = xs.shape[0]
        cols = xs if rows > 1 else torch.cat([xs, xs])
        dist = torch.mm(self._search, cols.t())[:, :rows]  # [bins, rows]
        lead, index = dist.topk(2, dim=0, largest=False)
        n = xs.shape[1]
        gamma = n * _UNIT_ROUNDOFF / (1 - n * _UNIT_ROUNDOFF)
        bound = (norm[:, 0].sqrt() + self._radius).pow_(2).mul_(2 * gamma)
        if bool(((lead[1] - lead[0] > 2 * bound) & (lead[1] > bound)).all()):
            return index[0]
        return None

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Centroids ``[..., dim]`` of ``codes`` ``[...]``."""
        return F.embedding(codes, self.centroids)

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Keep only what inference reads, once. The centroids become ``embedding_sum``
        itself, with ``cluster_usage`` 1 (the same centroids to the bit: x / 1 is x), and
        ``embedding_sum`` a view of the search table, so the codebook is in memory once
        instead of twice (for ``mimi``, 67 MB of a stream's ~700). The moving-average
        statistics are gone: the codebook cannot train after this.
        """
        self._refresh()
        self.cluster_usage.fill_(1.0)
        self._buffers["embedding_sum"] = self._centroids
        self._folded = True

    def _check_trainable(self) -> None:
        if self._folded:
            raise RuntimeError("this codebook was folded for inference; it cannot train")

    @torch.no_grad()
    def init_from(
        self, samples: torch.Tensor, iters: int = KMEANS_ITERS, usage_total: float | None = None
    ) -> None:
        """k-means initialisation from ``samples`` ``[N, dim]`` (``iters`` Lloyd steps).

        ``usage_total`` rescales the counts to the total usage the EMA settles at (the
        frames of one batch): fitted on many batches, the raw counts would outweigh
        hundreds of EMA steps and keep the centroids from following the latent.
        """
        self._check_trainable()
        means, counts = _kmeans(samples.float(), self.bins, iters)
        if usage_total is not None:
            counts = counts * (usage_total / float(counts.sum()))
        self.embedding_sum.copy_(means * counts[:, None])
        self.cluster_usage.copy_(counts)
        self._initialized.fill_(1)

    @torch.no_grad()
    def update(self, samples: torch.Tensor, codes: torch.Tensor, weight: torch.Tensor) -> None:
        """One EMA step from ``samples [N, dim]`` assigned to ``codes [N]``.

        ``weight [N]`` (1 or 0) says which samples count; weighting instead of selecting
        avoids a device sync per level on a GPU.
        """
        self._check_trainable()
        if self.initialized:
            self._steps_to_check -= 1
            if self._steps_to_check <= 0:
                self._steps_to_check = CHECK_UNUSED_EVERY
                active = samples[weight > 0]
                if active.shape[0]:
                    self._replace_dead(active)
        weight = weight.to(self.cluster_usage.dtype)
        counts = torch.zeros_like(self.cluster_usage).index_add_(0, codes, weight)
        sums = torch.zeros_like(self.embedding_sum).index_add_(0, codes, samples * weight[:, None])
        self.cluster_usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embedding_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)

    def _replace_dead(self, samples: torch.Tensor) -> None:
        """Give dead codes (usage under ``threshold_usage_ratio`` of the mean) fresh samples.

        Each sample goes to one dead code at most. Drawing with replacement, as the
        reference does, copies a sample into many entries when a batch has fewer frames
        than the codebook has entries (a CPU batch of 8 x 1 s has 100): the copies stay
        identical, the search only ever picks the first, so the rest are dead again at
        the next check (the step-57800 model had 3015 such copies in its 65536 entries).
        Dead codes left over keep their vectors until a later check.
        """
        mean_usage = self.cluster_usage.sum() / self.bins
        dead = self.cluster_usage < self.threshold_usage_ratio * mean_usage
        # Rank the dead codes in a random order, then give the r-th one the r-th sample
        # of a random permutation (no sync: a count of the dead would read the device).
        order = torch.rand(self.bins, device=dead.device).masked_fill_(~dead, 2.0)
        rank = torch.empty_like(order, dtype=torch.long)
        rank[order.argsort()] = torch.arange(self.bins, device=dead.device)
        n = samples.shape[0]
        perm = torch.randperm(n, device=samples.device)
        replace = dead & (rank < n)
        fresh = samples[perm[rank.clamp(max=n - 1)]]
        usage = REPLACED_USAGE_RATIO * mean_usage
        self.embedding_sum.copy_(torch.where(replace[:, None], usage * fresh, self.embedding_sum))
        self.cluster_usage.copy_(torch.where(replace, usage, self.cluster_usage))


class _Level(nn.Module):
    """One level; the extra nesting matches the checkpoint key ``layers.N._codebook``."""

    def __init__(self, codebook: EuclideanCodebook) -> None:
        super().__init__()
        self._codebook = codebook


class _Levels(nn.Module):
    def __init__(self, levels: list[_Level]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(levels)


@dataclass(frozen=True)
class RVQEncoding:
    """Codes ``[B, n, T]``, each level's decoded contribution ``[n, B, C, T]`` (projected)
    and ``continuous [B, C, T]``: the input projected in and back out unquantized, what
    the contributions approach as levels are added."""

    codes: torch.Tensor
    contributions: torch.Tensor
    continuous: torch.Tensor


@dataclass(frozen=True)
class RVQTrainOutput:
    """Training pass of one residual quantizer.

    Attributes:
        quantized: ``[B, C, T]`` projected reconstruction (straight-through gradients).
        continuous: ``[B, C, T]`` the same path without quantization: the projected input
            projected back (what the decoder sees on continuous steps).
        codes: ``[B, n, T]`` long.
        sq_error_sum: scalar, sum of squared commitment errors over active (level, frame).
        active_count: scalar, number of active (level, frame, channel) values.
        perplexity: ``[n]`` codebook perplexity per level over the active frames.
    """

    quantized: torch.Tensor
    continuous: torch.Tensor
    codes: torch.Tensor
    sq_error_sum: torch.Tensor
    active_count: torch.Tensor
    perplexity: torch.Tensor


class ResidualVectorQuantizer(nn.Module):
    """``n`` residual levels behind a 1x1 input projection ``C -> dim`` and back ``dim -> C``."""

    def __init__(self, cfg: QuantizerConfig, input_dim: int, n_levels: int) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.input_proj = nn.Conv1d(input_dim, cfg.dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(cfg.dimension, input_dim, 1, bias=False)
        books = [
            EuclideanCodebook(cfg.dimension, cfg.bins, cfg.decay, cfg.threshold_usage_ratio)
            for _ in range(n_levels)
        ]
        self.vq = _Levels([_Level(b) for b in books])
        self.dim = cfg.dimension
        self._stack: torch.Tensor | None = None  # see _tables

    def codebook(self, level: int) -> EuclideanCodebook:
        return self.vq.layers[level]._codebook

    def encode(self, latent: torch.Tensor, n: int) -> RVQEncoding:
        """Codes of the first ``n`` levels for ``latent`` ``[B, C, T]``."""
        B, _, T = latent.shape
        x = F.conv1d(latent, self.input_proj.weight)
        dim = x.shape[1]
        # Frames as rows, [B * T, dim] in (b, t) order, through all levels: the layout the
        # reference searches in (so reductions round as its do), and no per-level
        # transposes (a streaming step's cost is its op count).
        residual = x.transpose(1, 2).reshape(B * T, dim)
        codes, parts = [], []
        for j in range(n):
            book = self.codebook(j)
            c = book.nearest(residual)
            q = book.lookup(c)
            residual = residual - q
            codes.append(c)
            parts.append(q)
        stacked = torch.stack(parts)  # [n, B * T, dim]
        w = self.output_proj.weight[:, :, 0]  # [C, dim]
        contributions = torch.matmul(stacked, w.t()).view(n, B, T, -1).permute(0, 1, 3, 2)
        continuous = torch.matmul(x.transpose(1, 2), w.t()).transpose(1, 2)
        codes_t = torch.stack(codes, dim=1).view(B, T, n).transpose(1, 2)
        return RVQEncoding(codes_t, contributions, continuous)

    def project(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent [B, C, T]`` through both projections, unquantized (``continuous``)."""
        return F.conv1d(F.conv1d(latent, self.input_proj.weight), self.output_proj.weight)

    def decode(self, codes: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
        """``codes [B, k, T]`` (``k >= 1``) to ``[B, C, T]``.

        ``levels [B, T]`` (may be 0) keeps only the first ``levels[b, t]`` levels of frame t.
        """
        B, k, T = codes.shape
        table = self._tables()[:k, :, : self.dim]  # [k, bins, dim]
        level = torch.arange(k, device=codes.device)[:, None]  # [k, 1]
        # All levels in one gather (one op, where a lookup per level was ~16 with views):
        # [k, B * T] codes index their own level's centroids -> [k, B * T, dim].
        q = table[level, codes.transpose(0, 1).reshape(k, B * T)]
        if levels is not None:
            keep = levels.reshape(1, B * T) > level  # [k, B * T]
            q = q * keep.unsqueeze(-1).to(q.dtype)
        quantized = q.sum(0).view(B, T, -1).transpose(1, 2)  # [B, dim, T]
        return F.conv1d(quantized, self.output_proj.weight)

    def _tables(self) -> torch.Tensor:
        """The levels' search tables stacked, ``[n, bins, dim + 2]``.

        Each codebook's own table (``_search``, package-private) is then a view of its
        row, so the stack costs no memory; a codebook whose buffers changed (an EMA step,
        a load) rebuilds its table in its row.
        """
        books = [self.codebook(j) for j in range(self.n_levels)]
        first = books[0].embedding_sum
        stack = self._stack
        # (A stack made under inference_mode cannot be written outside it: a new one.)
        if (
            stack is None
            or stack.device != first.device
            or stack.dtype != first.dtype
            or (stack.is_inference() and not torch.is_inference_mode_enabled())
        ):
            stack = first.new_empty(self.n_levels, first.shape[0], self.dim + 2)
            self._stack = stack
        base, step = stack.data_ptr(), stack.stride(0) * stack.element_size()
        for j, book in enumerate(books):
            # A folded codebook whose buffers are its row needs nothing (checked without
            # making a view: this runs for every level of every decoded frame).
            ptr = book.embedding_sum.data_ptr()
            if not (book._folded and ptr == book._search.data_ptr() == base + j * step):
                book._refresh(out=stack[j])
        return stack

    @torch.no_grad()
    def fit(
        self, latent: torch.Tensor, iters: int = KMEANS_ITERS, usage_total: float | None = None
    ) -> None:
        """Set every codebook by k-means on ``latent`` ``[N, C]`` (frames x channels),
        level after level on the residual the levels before it leave."""
        residual = F.linear(latent.float(), self.input_proj.weight[:, :, 0].float())
        for j in range(self.n_levels):
            book = self.codebook(j)
            book.init_from(residual, iters, usage_total)
            residual = residual - book.lookup(book.nearest(residual))

    def train_forward(self, latent: torch.Tensor, levels: torch.Tensor) -> RVQTrainOutput:
        """Quantize ``[B, C, T]`` using the first ``levels[b, t]`` levels (may be 0) per frame.

        In training mode, uninitialised codebooks are set by k-means (one level per call,
        once the level before it was initialised on an earlier batch, so a level never
        learns from residuals its predecessor just fitted exactly) and every active
        codebook takes an EMA step.
        """
        B, _, T = latent.shape
        x = F.conv1d(latent, self.input_proj.weight)
        dim = x.shape[1]
        residual = x
        total = torch.zeros_like(x)
        sq_sum = x.new_zeros(())
        count = x.new_zeros(())
        codes, perplexities = [], []
        previous_ready = True
        for j in range(self.n_levels):
            book = self.codebook(j)
            active = (levels > j).reshape(-1)  # [B*T] in (b, t) order
            flat = residual.transpose(1, 2).reshape(-1, dim)
            was_ready = book.initialized
            if self.training and not was_ready and previous_ready and bool(active.any()):
                book.init_from(flat.detach()[active])
            previous_ready = was_ready
            c = book.nearest(flat.detach())
            q_flat = book.lookup(c).detach()
            weight = active.to(x.dtype)
            if self.training:
                book.update(flat.detach(), c, weight)
            err = (flat - q_flat).pow(2).sum(-1)
            sq_sum = sq_sum + (err * weight).sum()
            count = count + weight.sum() * dim
            usage = torch.zeros(book.bins, device=x.device).index_add_(0, c, weight.float())
            prob = usage / usage.sum().clamp(min=1)
            perplexities.append(torch.exp(-(prob * prob.clamp(min=1e-12).log()).sum()))
            q = q_flat.view(B, T, dim).transpose(1, 2)
            residual = residual - q
            total = total + q * (levels > j).unsqueeze(1).to(q.dtype)
            codes.append(c.view(B, T))
        any_active = (levels > 0).unsqueeze(1).to(x.dtype)
        # Straight-through estimator: values of the codebook sum, gradients of identity.
        ste = (x + (total - x).detach()) * any_active
        quantized = F.conv1d(ste, self.output_proj.weight)
        continuous = F.conv1d(x * any_active, self.output_proj.weight)
        return RVQTrainOutput(
            quantized,
            continuous,
            torch.stack(codes, dim=1),
            sq_sum,
            count,
            torch.stack(perplexities),
        )


@dataclass(frozen=True)
class QuantizerEncoding:
    """``codes [B, K, T]`` long; ``latent_error [B, K, T]``: squared L2 distance between
    the decoder's input from the first ``k + 1`` levels and from unquantized projections
    (the quantization error where the decoder sees it; see
    :meth:`SplitResidualVectorQuantizer.encode`)."""

    codes: torch.Tensor
    latent_error: torch.Tensor


@dataclass(frozen=True)
class QuantizerTrainOutput:
    """``quantized [B, C, T]``, ``continuous [B, C, T]`` (the same projections without
    quantization), ``codes [B, n_q, T]``, scalar ``commitment_loss``, ``perplexity [n_q]``."""

    quantized: torch.Tensor
    continuous: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor


class SplitResidualVectorQuantizer(nn.Module):
    """``rvq_first`` (levels ``1..n_q_semantic``) and ``rvq_rest`` (the others) on one latent."""

    def __init__(self, cfg: QuantizerConfig, input_dim: int) -> None:
        super().__init__()
        self.n_q = cfg.n_q
        self.n_q_semantic = cfg.n_q_semantic
        self.bins = cfg.bins
        self.rvq_first = ResidualVectorQuantizer(cfg, input_dim, cfg.n_q_semantic)
        self.rvq_rest = ResidualVectorQuantizer(cfg, input_dim, cfg.n_q - cfg.n_q_semantic)

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Every level's search table built now (else a stream's first frame builds them,
        its memory peak), and its codebook folded into it
        (:meth:`EuclideanCodebook.fold_for_inference`): codes and outputs are unchanged,
        the quantizer's memory halves, and it cannot train after this."""
        for rvq in (self.rvq_first, self.rvq_rest):
            rvq._tables()
            for j in range(rvq.n_levels):
                rvq.codebook(j).fold_for_inference()

    def encode(self, latent: torch.Tensor, n_q: int | None = None) -> QuantizerEncoding:
        """``latent [B, C, T]`` to the codes of the first ``n_q`` levels (default all)."""
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in 1..{self.n_q}, got {n_q}")
        first = self.rvq_first.encode(latent, min(n_q, self.n_q_semantic))
        codes, parts = first.codes, first.contributions
        recon = parts.cumsum(0)
        if n_q > self.n_q_semantic:
            rest = self.rvq_rest.encode(latent, n_q - self.n_q_semantic)
            codes = torch.cat([codes, rest.codes], dim=1)
            recon = torch.cat([recon, recon[-1:] + rest.contributions.cumsum(0)])
            continuous = first.continuous + rest.continuous
        else:
            continuous = first.continuous + self.rvq_rest.project(latent)
        # The error against the unquantized projections, not the latent itself: the
        # projections keep only part of the latent (256 of 512 dimensions in Mimi), and a
        # trained output projection is not the input's inverse, so the distance to the
        # latent hardly moves with levels (measured on the trained `small` model: log10 of
        # it 2.62 at 1 level, 2.66 at 32). The decoder is trained on both of these inputs.
        error = (continuous.unsqueeze(0) - recon).pow(2).sum(2)  # [K, B, T]
        return QuantizerEncoding(codes, error.transpose(0, 1))

    def decode(self, codes: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """``codes [B, K, T]`` (any ``K`` in ``1..n_q``) to the latent ``[B, C, T]``.

        ``levels [B, T]`` (values ``1..K``) decodes frame ``t`` from its first
        ``levels[b, t]`` levels; masking adds exact zeros, so a constant ``levels == k``
        equals decoding ``codes[:, :k]``.
        """
        n_sem = self.n_q_semantic
        first_levels = None if levels is None else levels.clamp(max=n_sem)
        out = self.rvq_first.decode(codes[:, :n_sem], first_levels)
        if codes.shape[1] > n_sem:
            rest_levels = None if levels is None else levels - n_sem
            if rest_levels is None or bool((rest_levels > 0).any()):
                out = out + self.rvq_rest.decode(codes[:, n_sem:], rest_levels)
        return out

    @torch.no_grad()
    def fit(
        self, latent: torch.Tensor, iters: int = KMEANS_ITERS, usage_total: float | None = None
    ) -> None:
        """Set all codebooks by residual k-means on ``latent`` ``[N, C]`` frames.

        Fitting on many batches at once gives 2048 centroids the thousands of samples
        they need; the EMA steps of training then follow the latent as it moves.
        """
        self.rvq_first.fit(latent, iters, usage_total)
        self.rvq_rest.fit(latent, iters, usage_total)

    def forward(self, latent: torch.Tensor, levels: torch.Tensor) -> QuantizerTrainOutput:
        """Training pass: ``latent [B, C, T]``, ``levels [B, T]`` in ``1..n_q`` per frame.

        Always in float32, autocast or not (a GPU run trains under bfloat16 autocast):
        inference searches in float32, and a bfloat16 search picks other codes (the
        packaged model, a 4 s clip, the same latent: 12 % of the codes at 8 levels)."""
        with torch.autocast(latent.device.type, enabled=False):
            return self._train_forward(latent.float(), levels)

    def _train_forward(self, latent: torch.Tensor, levels: torch.Tensor) -> QuantizerTrainOutput:
        n_sem = self.n_q_semantic
        first = self.rvq_first.train_forward(latent, levels.clamp(max=n_sem))
        rest = self.rvq_rest.train_forward(latent, (levels - n_sem).clamp(min=0))
        loss = (first.sq_error_sum + rest.sq_error_sum) / (
            first.active_count + rest.active_count
        ).clamp(min=1)
        return QuantizerTrainOutput(
            first.quantized + rest.quantized,
            first.continuous + rest.continuous,
            torch.cat([first.codes, rest.codes], dim=1),
            loss,
            torch.cat([first.perplexity, rest.perplexity]),
        )
