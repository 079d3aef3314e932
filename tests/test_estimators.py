"""The estimators of the where-diffusion-wins studies on synthetic data with a known answer: the
data-repetition crossover (``analysis.fits.crossover``), the interior compute-optimal size and
its law, and the compute multiplier."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.fits import (
    compute_multiplier,
    crossover,
    fit_optimal_size,
    fit_power_law,
    frontier,
    mark_interior,
    refine_optimum,
)

EPOCHS = [1, 4, 16, 64, 256]


def test_a_noiseless_line_crosses_where_it_reaches_zero():
    # delta = 3 - log2(epochs): zero at 8 epochs, between the measured 4 and 16
    c = crossover(EPOCHS, [3 - math.log2(e) for e in EPOCHS], [0.0] * 5)
    assert (c["status"] == "crosses" and c["x"] == pytest.approx(8.0)
            and c["lo"] == c["hi"] == pytest.approx(8.0))


def test_noise_widens_the_interval_on_both_sides_and_order_does_not_matter():
    delta = [3 - math.log2(e) for e in EPOCHS]
    c = crossover(EPOCHS[::-1], delta[::-1], [0.5] * 5)
    # delta - 0.98 reaches zero at 2^2.02, delta + 0.98 at 2^3.98
    assert c["x"] == pytest.approx(8.0)
    assert c["lo"] == pytest.approx(2 ** 2.02) and c["hi"] == pytest.approx(2 ** 3.98)


def test_never_ahead_and_ahead_from_the_start_are_said_so():
    never = crossover(EPOCHS, [0.3] * 5, [0.01] * 5)
    assert never["status"] == "never" and never["x"] is None and never["hi"] is None
    start = crossover(EPOCHS, [-0.3] * 5, [0.01] * 5)
    assert start["status"] == "from_start" and start["x"] == 1 and start["lo"] is None


def test_the_latest_bound_beyond_the_range_is_open():
    # crosses between 64 and 256, but within the noise it may never cross in range
    delta = [1.0, 0.8, 0.5, 0.1, -0.05]
    c = crossover(EPOCHS, delta, [0.05] * 5)
    assert c["status"] == "crosses" and 64 < c["x"] < 256 and c["hi"] is None and 16 < c["lo"] < c["x"]


def test_nan_points_are_dropped():
    c = crossover([1, 4, np.nan, 16], [1.0, 0.5, -9.0, -0.5], [0, 0, 0, 0])
    assert c["x"] == pytest.approx(8.0)


# --- the scaling grid: interior optima, the optimal-size law, the compute multiplier ----------
def _groups(law, sizes, budgets, objective="ar"):
    """Seed-mean rows as ``analysis.fits.grouped`` makes them, from ``law(params, flops)``."""
    return pd.DataFrame([{"objective": objective, "params": n, "cgroup": c, "flops": c, "size": f"n{n:g}",
                          "bpb_mean": law(n, c), "bpb_se": 0.0, "n_seeds": 1, "tokens": c / (6 * n),
                          "bound": "exact" if objective == "ar" else "upper"}
                         for n in sizes for c in budgets])


def _isoflop(n, c):
    """A parabola in ln N with its vertex at N_opt = 1e-3 * C^0.5."""
    return 2.0 + 0.1 * (math.log(n) - math.log(1e-3 * c ** 0.5)) ** 2 - 0.05 * math.log(c)


def test_the_optimum_is_interior_only_with_a_smaller_and_a_larger_size_beside_it():
    sizes, budgets = [1e3, 2e3, 4e3, 8e3], [1e12, 1e14]   # N_opt 1e3 (edge) and 1e4 (beyond the grid)
    g = _groups(_isoflop, sizes, budgets)
    f = mark_interior(g, frontier(g))
    assert list(f["interior"]) == [False, False]
    g = _groups(_isoflop, [5e2, 1e3, 2e3, 4e3, 8e3, 1.6e4], budgets)
    assert list(mark_interior(g, frontier(g))["interior"]) == [True, True]


def test_the_refined_optimum_is_the_parabola_vertex_between_grid_points():
    g = _groups(_isoflop, [2.5e3, 5e3, 1e4, 2e4], [1e14 * 1.44])   # N_opt = 1.2e4, between 1e4 and 2e4
    assert refine_optimum(g, "ar", 1e14 * 1.44) == pytest.approx(1.2e4, rel=1e-6)
    assert refine_optimum(g.iloc[:2], "ar", 1e14 * 1.44) is None          # fewer than three sizes


def test_the_optimal_size_law_recovers_its_exponent():
    budgets = [1e12, 4e12, 1.6e13, 6.4e13]
    sizes = [2 ** k * 100 for k in range(8)]                 # 100 .. 12,800 brackets N_opt 1e3 .. 8e3
    g = _groups(_isoflop, sizes, budgets)
    fit = fit_optimal_size(g, mark_interior(g, frontier(g)))["ar"]
    assert fit["exponent"] == pytest.approx(0.5, abs=1e-6) and len(fit["points"]) == 4


def test_the_compute_multiplier_of_a_curve_shifted_by_a_known_factor():
    budgets = [1e11, 1e12, 1e13]
    ar = _groups(lambda n, c: 10 * c ** -0.1, [1e5], budgets)
    md = _groups(lambda n, c: 10 * (c / 4.0) ** -0.1, [1e5], budgets, objective="mdlm")   # needs 4x
    rng = np.random.default_rng(0)
    md_pts = pd.DataFrame([{"objective": "mdlm", "params": 1e5, "cgroup": c, "flops": c,
                            "val_bpb": 10 * (c / 4.0) ** -0.1 * math.exp(rng.normal(0, 0.002))}
                           for c in budgets for _ in range(2)])
    front = pd.concat([ar, md], ignore_index=True)
    fits = {"mdlm": fit_power_law(md_pts["flops"], md_pts["val_bpb"])}
    m = compute_multiplier(front, fits)
    # at 1e13 the 4e13 needed lies 4x beyond the fitted budgets: shown, flagged
    assert list(m["objective"]) == ["mdlm"] * 3 and list(m["how"]) == ["interpolated"] * 2 + ["far outside"]
    assert m["multiplier"].to_numpy() == pytest.approx(4.0, rel=0.1)
    assert (m["multiplier_lo"] < m["multiplier"]).all() and (m["multiplier"] < m["multiplier_hi"]).all()
    assert (m["multiplier_lo"] < 4.0).all() and (4.0 < m["multiplier_hi"]).all()


def test_an_early_lead_that_is_lost_again_is_not_the_crossover():
    # ahead at 1 epoch (both barely trained), behind at 4 and 16, ahead for good from 32
    c = crossover(EPOCHS, [-0.1, 0.2, 0.4, -0.4, -1.0], [0.0] * 5)
    assert c["status"] == "crosses" and c["x"] == pytest.approx(2 ** 5) and c["ahead_at"] == [1, 64, 256]
