"""The CPU kernels for streaming steps compute what PyTorch's own do."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from mimirate.models import kernels


@pytest.mark.parametrize("rows", [1, 2, 8, 9, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_torch(rows: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(1, rows, 96, generator=g)
    w = torch.randn(160, 96, generator=g)
    b = torch.randn(160, generator=g) if bias else None
    y = kernels.linear(x, w, b)
    assert y.shape == (1, rows, 160) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_linear_takes_strided_input_and_backpropagates() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g).t().requires_grad_()  # [2, 64], non-contiguous
    w = torch.randn(32, 64, generator=g, requires_grad=True)
    kernels.linear(x, w).square().sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.linear(x2, w2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-4)


def test_large_linear_is_torch_bit_for_bit_without_onednn(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", None)
    x = torch.randn(3, 40, 64)
    w = torch.randn(48, 64)
    assert torch.equal(kernels.linear(x, w), F.linear(x, w))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a oneDNN build")
@pytest.mark.parametrize("bias", [False, True])
def test_dense_runs_through_onednn_and_matches_torch(bias: bool) -> None:
    assert kernels._ONEDNN_LINEAR is not None  # this build has the operator
    g = torch.Generator().manual_seed(3)
    x = torch.randn(250, 2048, generator=g)
    w = torch.randn(512, 2048, generator=g) / 45
    b = torch.randn(512, generator=g) if bias else None
    with torch.no_grad():
        y = kernels.dense(x, w, b)
    ref = F.linear(x, w, b)
    assert y.shape == ref.shape and y.is_contiguous()
    assert not torch.equal(y, ref)  # another summation order: oneDNN ran, not BLAS
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_dense_under_autograd_is_f_linear_and_backpropagates() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 96, generator=g, requires_grad=True)
    w = torch.randn(32, 96, generator=g, requires_grad=True)
    y = kernels.dense(x, w)
    assert torch.equal(y, F.linear(x, w))
    y.square().sum().backward()
    assert x.grad is not None and w.grad is not None


def test_onednn_gemm_can_be_turned_off() -> None:
    code = "from mimirate.models import kernels; print(kernels._ONEDNN_LINEAR is None)"
    env = {**os.environ, "MIMIRATE_ONEDNN_GEMM": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize(
    ("batch", "length", "kernel", "stride", "dilation", "bias"),
    [
        (1, 24, 16, 8, 1, True),  # deepest encoder conv: 2 steps
        (1, 8, 7, 1, 1, True),  # first decoder conv: 2 steps
        (2, 9, 3, 1, 3, False),  # dilated, two streams
        (1, 7, 3, 2, 1, True),  # length not landing on a stride
        (1, 2000, 3, 1, 1, True),  # long: PyTorch's kernel
        (3, 50, 1, 1, 1, True),  # 1x1, several streams
        (1, 5000, 1, 1, 1, False),  # 1x1, long, no bias
    ],
)
def test_conv1d_matches_torch(
    batch: int, length: int, kernel: int, stride: int, dilation: int, bias: bool
) -> None:
    g = torch.Generator().manual_seed(length)
    x = torch.randn(batch, 24, length, generator=g)
    w = torch.randn(40, 24, kernel, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    y = kernels.conv1d(x, w, b, stride, dilation)
    ref = F.conv1d(x, w, b, stride, dilation=dilation)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_conv1d_shorter_than_its_kernel_fails_as_torch_does() -> None:
    x = torch.randn(1, 4, 2)
    w = torch.randn(5, 4, 3)
    with pytest.raises(RuntimeError, match="Kernel size"):
        kernels.conv1d(x, w)


def test_grouped_conv1d_is_torch() -> None:
    x = torch.randn(1, 8, 6)
    w = torch.randn(8, 2, 3)
    assert torch.equal(kernels.conv1d(x, w, groups=4), F.conv1d(x, w, groups=4))


def test_small_conv1d_backpropagates() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 10, generator=g, requires_grad=True)
    w = torch.randn(4, 6, 4, generator=g, requires_grad=True)
    kernels.conv1d(x, w, None, 3).sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv1d(x2, w2, None, 3).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


def test_large_weight_conv1d_takes_the_gemm_and_matches_torch() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 256, 8 * 49 + 8, generator=g)  # 50 steps of a stride-8 conv
    w = torch.randn(1024, 256, 8, generator=g) / 45
    assert w.numel() >= kernels.LARGE_WEIGHT
    b = torch.randn(1024, generator=g)
    y = kernels.conv1d(x, w, b, 8)
    ref = F.conv1d(x, w, b, 8)
    assert y.shape == ref.shape == (1, 1024, 50)
    assert not torch.equal(y, ref)  # another summation order: the GEMM path ran
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


_CHURN = """
import resource, torch
from mimirate.models import kernels
kept = kernels.keep_freed_memory()
def churn():
    ts = [torch.ones(3 << 20) for _ in range(3)]  # three 12 MiB buffers, then all freed
    del ts
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn_faults(keep: str) -> tuple[str, int]:
    env = {**os.environ, "MIMIRATE_KEEP_FREED_MEMORY": keep}
    out = subprocess.run(
        [sys.executable, "-c", _CHURN], env=env, capture_output=True, text=True, check=True
    )
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_keep_freed_memory_stops_buffers_faulting_in_afresh() -> None:
    # Offline layers free and reallocate buffers of this size: 10 rounds of 3 x 12 MiB
    # are 92160 pages. Kept, the same memory serves every round (3072 faults measured);
    # under glibc's default the heap is trimmed and faulted in again (12-64 k measured).
    kept, faults = _churn_faults("1")
    default, default_faults = _churn_faults("0")
    assert (kept, default) == ("True", "False")
    assert faults < 4608 < default_faults
