import numpy as np
import pytest

from mimirate.errors import ConfigError
from mimirate.ratecontrol.allocation import (
    Calibration,
    StreamingAllocator,
    allocate,
    fit_allocation,
    hull_gains,
    loudness_weights,
    side_bits_per_frame,
    silent_frames,
)


def curves(rng, t=300, k=32):
    """Synthetic per-frame error curves: frames differ in difficulty and in decay."""
    lv = np.arange(1, k + 1)[:, None]
    scale = rng.lognormal(0.0, 1.0, t)[None]
    decay = rng.uniform(3.0, 12.0, t)[None]
    return scale * np.exp(-lv / decay)


@pytest.mark.parametrize("target", [550.0, 1100.0, 2200.0])
def test_hits_target_and_beats_uniform(rng, target):
    err = curves(rng)
    a = allocate(err, target)
    side = side_bits_per_frame(32) * 12.5
    assert a.bps <= target and a.bps > target - 11 * 12.5 / err.shape[1] - 1e-9
    uniform = int((target - side) // (11 * 12.5))  # the fixed level count the same budget buys
    t = np.arange(err.shape[1])
    assert err[a.levels - 1, t].sum() < err[uniform - 1, t].sum()


def test_optimal_on_convex_curves(rng):
    # Exhaustive check on 3 frames x 6 levels: greedy on convex curves is optimal.
    import itertools

    gains = -np.sort(-rng.random((5, 3)), axis=0)  # positive, non-increasing per frame
    err = np.vstack([np.full((1, 3), 5.0), 5.0 - np.cumsum(gains, axis=0)])
    budget_levels = 9
    a = allocate(err, (budget_levels * 11 + 3 * 3) * 12.5 / 3, side_bits=3)
    best = min(
        (sum(err[lv - 1, i] for i, lv in enumerate(c)), c)
        for c in itertools.product(range(1, 7), repeat=3)
        if sum(c) <= budget_levels
    )
    assert sum(a.levels) == budget_levels
    assert sum(err[lv - 1, i] for i, lv in enumerate(a.levels)) == pytest.approx(best[0])


def test_hull_gains_non_increasing():
    d = np.array([[10.0], [9.9], [5.0], [4.9], [1.0]])  # a non-convex curve
    g = hull_gains(d)
    assert np.all(np.diff(g[:, 0]) <= 1e-12)
    assert g.sum() == pytest.approx(9.0)


def test_silence_and_bounds(rng):
    err = curves(rng, t=20)
    quiet = np.zeros(20, bool)
    quiet[:5] = True
    a = allocate(err, 3000.0, silent=quiet, min_levels=2, max_levels=12)
    assert (a.levels[:5] == 1).all()
    assert a.levels[5:].min() >= 2 and a.levels.max() <= 12
    with pytest.raises(ConfigError):
        allocate(err, -1.0)
    with pytest.raises(ConfigError):
        allocate(err[:, :0], 1000.0)
    with pytest.raises(ConfigError):
        allocate(np.full((4, 3), np.nan), 1000.0)


def test_silent_frames():
    x = np.zeros(1920 * 3, np.float32)
    x[1920:3840] = 0.1 * np.sin(np.arange(1920) * 0.1)
    assert list(silent_frames(x, 1920)) == [True, False, True]


def test_loudness_weights():
    x = np.zeros(1920 * 3, np.float32)
    x[:1920] = 0.5
    x[1920:3840] = 0.02
    w = loudness_weights(x, 1920)
    assert w[:2] == pytest.approx([0.5**0.5, 0.02**0.5])
    assert w[2] < 1e-4  # digital silence
    assert loudness_weights(x, 1920, exponent=1.0)[:2] == pytest.approx([0.5, 0.02])


def test_weights_move_levels_to_the_heavier_frames_and_their_scale_is_free(rng):
    err = np.repeat(curves(rng, t=1), 10, axis=1)  # ten identical frames
    w = np.ones(10)
    w[:5] = 4.0
    a = allocate(err, 2000.0, weights=w)
    assert a.levels[:5].min() > a.levels[5:].max()
    assert np.array_equal(allocate(err, 2000.0, weights=7.0 * w).levels, a.levels)
    b = fit_allocation(err, 2000 * 10 // 12, _file_bits, weights=w)
    assert b.levels[:5].min() > b.levels[5:].max()
    s = StreamingAllocator(2000.0, lookahead=10)
    for j in range(10):
        s.push(err[:, j], weight=float(w[j]))
    streamed = s.flush()
    assert min(streamed[:5]) > max(streamed[5:])
    for bad in (np.ones(9), np.full(10, -1.0), np.full(10, np.nan)):
        with pytest.raises(ConfigError):
            allocate(err, 2000.0, weights=bad)
    with pytest.raises(ConfigError):
        StreamingAllocator(2000.0).push(err[:, 0], weight=-1.0)


def test_calibration_monotone_and_used(rng, tmp_path):
    e = rng.lognormal(-2, 1.5, 4000)
    mel = 0.3 * np.log10(e) + rng.normal(0, 0.05, e.size)
    cal = Calibration.fit(e, mel, model="t", source="synthetic", num_frames=e.size)
    assert np.all(np.diff(cal.mel) >= 0)
    assert cal(np.array([1e-3]))[0] < cal(np.array([1.0]))[0]
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal
    with pytest.raises(ConfigError):
        Calibration.load(tmp_path / "none.json")


def test_streaming_allocator_tracks_target(rng):
    err = curves(rng, t=400)
    s = StreamingAllocator(1100.0, lookahead=8)
    out = []
    for t in range(err.shape[1]):
        got = s.push(err[:, t])
        assert len(got) == (1 if t >= 8 else 0)  # bounded delay: 8 frames
        out += got
    out += s.flush()
    lv = np.array(out)
    assert lv.size == 400
    bps = (lv.sum() * 11 + 5 * lv.size) * 12.5 / lv.size
    assert abs(bps - 1100.0) < 1100.0 * 0.05
    t = np.arange(400)
    offline = allocate(err, 1100.0).levels
    uniform = np.full(400, int((1100 - 62.5) // 137.5))
    got, best, flat = (err[x - 1, t].sum() for x in (lv, offline, uniform))
    assert best <= got < flat


def _file_bits(levels: np.ndarray, cap: int) -> int:
    """A stand-in for a real container: 400 bits of header, codes, and side information
    as wide as the cap needs, unless every frame is at the cap."""
    side = 0 if np.all(levels == cap) else side_bits_per_frame(cap) * levels.size
    return 400 + 11 * int(levels.sum()) + side


@pytest.mark.parametrize("budget_levels", [3, 8, 20])
def test_fit_allocation_fits_the_real_size_and_picks_the_best_cap(rng, budget_levels):
    err = curves(rng, t=120)
    budget = 400 + 11 * budget_levels * 120
    a = fit_allocation(err, budget, _file_bits)
    assert _file_bits(a.levels, int(a.levels.max())) <= budget
    t = np.arange(120)
    chosen = err[a.levels - 1, t].sum()
    # Never worse than the uniform file the budget buys (no side information at all)...
    assert chosen <= err[budget_levels - 1].sum() + 1e-9
    # ...nor than any single cap tried alone.
    for cap in (2, 4, 8, 16, 32):
        alone = fit_allocation(err, budget, _file_bits, caps=[cap])
        assert chosen <= err[alone.levels - 1, t].sum() + 1e-9
    # The spend is close to the budget: one more level somewhere would not fit.
    assert budget - _file_bits(a.levels, int(a.levels.max())) < 11 + side_bits_per_frame(32) * 120


def test_fit_allocation_when_nothing_fits(rng):
    err = curves(rng, t=10)
    a = fit_allocation(err, 100, _file_bits)  # below even the header
    assert np.all(a.levels == 1)
    with pytest.raises(ConfigError):
        fit_allocation(err, 10_000, _file_bits, caps=[33])


def test_fit_allocation_spends_on_the_frames_that_gain(rng):
    # Half the frames gain nothing past level 1 (flat curves): the budget goes to the rest.
    err = curves(rng, t=40)
    err[:, ::2] = err[:1, ::2]
    a = fit_allocation(err, 400 + 11 * 4 * 40 + 5 * 40, _file_bits)
    assert np.all(a.levels[::2] == 1) and a.levels[1::2].mean() > 6
