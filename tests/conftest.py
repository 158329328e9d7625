"""Shared fixtures. Tests that need ../shared/data skip with a clear message without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real speech and traces in ../shared/data (skips the test when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def quality_table():
    """An invented, rising quality-per-level table for rate-control tests (not measured):
    PESQ-like 1.1 + 3.2 (1 - exp(-k / 8)), mel-like 1 / k."""
    from mimirate.ratecontrol.qoe import QualityTable

    k = np.arange(1, 33)
    return QualityTable.from_measurements(
        1.1 + 3.2 * (1 - np.exp(-k / 8)),
        1.0 / k,
        model="t",
        weights_hash="00",
        dataset="d",
        num_files=1,
        command="c",
        created="now",
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """One torch thread per test process: with two, torch's threads spin-wait against
    any other busy process (Ray workers, servers the tests start) and a test can run
    several times slower. Modules that measure threading set their own count."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
