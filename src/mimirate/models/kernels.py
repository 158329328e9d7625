"""Linear maps and convolutions laid out for streaming steps on the CPU.

A streaming step multiplies large weights by very few columns: 2 transformer positions
per frame, one latent frame for the quantizer, 2-4 output steps in the deepest SEANet
convolutions. PyTorch hands ``F.linear(x, W)`` with few rows to BLAS as
``x @ W.T``, a shape that MKL on the x86 CPUs we measured (AMD EPYC, MKL 2024.2)
runs at 4 GB/s from memory; the same product written weight-major, ``(W @ x.T).T``,
streams the weight at 2-3x that speed (measured per matrix; ``benchmarks/
profile_modules.py`` shows the effect per module). The deepest strided convolutions
with 2-4 output steps fall to PyTorch's slow im2col path, which the same weight-major
GEMM on explicitly unfolded input beats by 2.5-3.5x. Offline too, 1x1 convolutions
are plain GEMMs, and so are convolutions with large weights and short outputs.

Offline products (many columns) are bound by arithmetic instead, and there MKL's SGEMM
on this AMD CPU reaches ~200 GFLOP/s where oneDNN, PyTorch's other CPU library, reaches
~450 on the same shapes; :func:`dense` sends them to oneDNN (the transformer's linear
maps, the decoder's transposed convolutions, the large-weight convolutions).

The values equal PyTorch's to float rounding (the sums run in another order), not
bit for bit; codes agree with the references (the parity tests and the benchmarks
check it). GPUs and the rest keep PyTorch's own kernels, where those are fastest;
autograd works through both.
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch
from torch.nn import functional as F

#: Products with at most this many columns (batch x steps) take the weight-major path.
SMALL_COLUMNS = 8
#: Convolution weights of at least this many values take it up to ``C_out`` columns.
LARGE_WEIGHT = 1 << 21


#: glibc's ``mallopt`` parameters (malloc.h) and the values :func:`keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20
_malloc_kept = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed buffers of up to 32 MiB for reuse (up to 128 MiB at the heap's
    top) instead of returning each to the kernel; True if the setting applies.

    Offline coding and training allocate and free tens of MB per layer. By default glibc
    serves such buffers with fresh ``mmap`` calls and unmaps them on free (its adaptive
    threshold follows the sizes it saw freed, and it trims the heap beyond twice that),
    so every layer page-faults its output in afresh: 0.85-1.5 M faults and 15-20 % of
    the time of encoding 10 s with ``mimi`` on this project's CPU, 11 % of a CPU training
    step of ``small`` (``benchmarks/bench_codec.py``). 32 MiB is the largest threshold
    glibc would adapt to by itself. The setting is the whole process's, so it is made once:
    by the first offline ``encode`` or ``decode`` on the CPU (after the weights are loaded,
    so that loading's buffers were already given back) or by a CPU training run; only
    under glibc, and not at all when ``MIMIRATE_KEEP_FREED_MEMORY=0``. No library does
    this for us: PyTorch caches CPU memory only in its mobile builds.
    """
    global _malloc_kept
    if _malloc_kept:
        return True
    if os.environ.get("MIMIRATE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _malloc_kept = ok
    return ok


def _onednn_linear_op() -> object | None:
    """PyTorch's oneDNN linear operator (the one its compiler's CPU backend calls), or
    None where this build lacks it or oneDNN is off."""
    if os.environ.get("MIMIRATE_ONEDNN_GEMM", "1") == "0":
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        # A private operator: check it computes a product here before relying on it.
        x, w = torch.eye(2), torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        if not torch.equal(op(x, w, None, "none", [None], ""), w.t()):
            return None
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    return op


_ONEDNN_LINEAR = _onednn_linear_op()


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [M, K] @ weight[N, K].T (+ bias)`` -> ``[M, N]``, the GEMM of the offline path.

    On the CPU, in float32, outside autograd, it runs through oneDNN's matmul instead of
    PyTorch's BLAS (MKL): on this project's AMD EPYC MKL's SGEMM reaches ~200 GFLOP/s,
    oneDNN's ~450 on the same shapes (the transformer's, the decoder's transposed
    convolutions, measured one by one). PyTorch routes float32 products to oneDNN only
    for its own compiler's frozen graphs, so the operator is called here directly.
    ``MIMIRATE_ONEDNN_GEMM=0`` keeps BLAS; anywhere else (autograd, other dtypes and
    devices) it is ``F.linear``.
    """
    if (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and weight.is_contiguous()
        and x.dim() == 2
    ):
        return _ONEDNN_LINEAR(x.contiguous(), weight, bias, "none", [None], "")
    return F.linear(x, weight, bias)


def small_columns(x: torch.Tensor, columns: int) -> bool:
    """Whether a product of a large weight with ``columns`` columns of ``x`` takes the
    weight-major path: float32 on the CPU (in bfloat16, PyTorch's own oneDNN product is
    the faster: 40-49 against 49-88 us for the transformer's matrices at 2 columns)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and columns <= SMALL_COLUMNS


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``: ``x [..., in]``, ``weight [out, in]`` -> ``[..., out]``."""
    rows = x.numel() // max(x.shape[-1], 1)
    if rows == 0:
        return F.linear(x, weight, bias)
    if not small_columns(x, rows):
        flat = x.reshape(rows, x.shape[-1])
        return dense(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])
    # Rows contiguous, so that BLAS sees a transposed operand: given the same columns
    # as a contiguous [in, rows] matrix, MKL takes a path 2x slower again.
    flat = x.reshape(rows, x.shape[-1]).contiguous()
    y = torch.mm(weight, flat.t()).t()
    if bias is not None:
        y = y + bias
    return y.contiguous().view(*x.shape[:-1], weight.shape[0])


def conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv1d`` without padding: ``x [B, C_in, L]``, ``weight [C_out, C_in, K]``."""
    B, c_in, length = x.shape
    c_out, _, kernel = weight.shape
    span = (kernel - 1) * dilation + 1
    steps = (length - span) // stride + 1 if length >= span else 0
    if groups != 1 or steps == 0:
        return F.conv1d(x, weight, bias, stride, dilation=dilation, groups=groups)
    if kernel == 1 and stride == 1 and x.device.type == "cpu":
        # A 1x1 conv is one GEMM; oneDNN's conv with 32 input channels on long inputs
        # runs 2.6x slower than it (SEANet's first residual block, offline).
        w = weight[:, :, 0]
        if bias is None:
            return torch.matmul(w, x)
        if B == 1:
            return torch.addmm(bias[:, None], w, x[0])[None]
        return torch.baddbmm(bias[:, None], w.expand(B, -1, -1), x)
    # Large weights and outputs shorter than the weight is wide also take the GEMM:
    # oneDNN reorders the weights into its blocked layout on every call, which for the
    # encoder's last conv (33 MB) costs more than the product (2.8x slower at 50 steps).
    large = weight.numel() >= LARGE_WEIGHT and B * steps <= c_out and x.device.type == "cpu"
    if not (large or small_columns(x, B * steps)):
        return F.conv1d(x, weight, bias, stride, dilation=dilation, groups=groups)
    # im2col: [B, C_in, steps, span] windows, then the dilation's taps.
    cols = x.unfold(-1, span, stride)[..., ::dilation]
    cols = cols.permute(0, 2, 1, 3).reshape(B * steps, c_in * kernel)
    if not small_columns(x, B * steps):
        y = dense(cols, weight.reshape(c_out, c_in * kernel), bias)  # [B * steps, C_out]
        return y.view(B, steps, c_out).transpose(1, 2)
    y = torch.mm(weight.reshape(c_out, c_in * kernel), cols.t())  # [C_out, B * steps]
    if bias is not None:
        y = y + bias[:, None]
    return y.view(c_out, B, steps).transpose(0, 1)
