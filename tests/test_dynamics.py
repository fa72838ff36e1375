"""The 1-1-1 linear network of Lillicrap et al. 2016 (preprint Fig. 3): expected FA flow, its fixed
points and their stability, and the project's FA rule against the analytic flow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biocredit import dynamics as dyn

LANDING = (2 ** (1 / 3), 2 ** (-1 / 3))  # where the FA flow from (0, 0) meets W0 W = 1 (T = B = 1)


@pytest.mark.parametrize("T,B", [(1.0, 1.0), (2.0, -0.7)])
def test_expected_flows_vanish_on_the_hyperbola_and_not_off_it(T: float, B: float) -> None:
    w0 = np.concatenate([-np.geomspace(0.2, 3, 25), np.geomspace(0.2, 3, 25)])
    for flow in (dyn.expected_fa_flow, dyn.expected_bp_flow):
        d0, d = flow(w0, T / w0, T, B)
        assert np.max(np.abs(d0)) < 1e-12 and np.max(np.abs(d)) < 1e-12
        for scale in (0.5, 1.5):  # off the hyperbola: W0 W = scale * T
            d0, d = flow(w0, scale * T / w0, T, B)
            assert np.all(np.hypot(d0, d) > 1e-3)
        d0, d = flow(0.0, 0.0, T, B)  # the origin is not a solution
        assert np.hypot(d0, d) > 0 or flow is dyn.expected_bp_flow  # BP's origin is a saddle point (zero flow)


def test_expected_fa_flow_is_the_mean_fa_update_and_vectorised_over_grids() -> None:
    G0, G = np.meshgrid(np.linspace(-2, 2, 7), np.linspace(-2, 2, 5))
    d0, d = dyn.expected_fa_flow(G0, G, T=1.5, B=0.8)
    r = 1.5 - G * G0
    assert d0.shape == d.shape == G.shape
    np.testing.assert_allclose(d0, 0.8 * r)
    np.testing.assert_allclose(d, G0 * r)
    b0, b = dyn.expected_bp_flow(G0, G, T=1.5, B=0.8)
    np.testing.assert_allclose(b0, G * r)  # backprop sends W e, not B e
    np.testing.assert_allclose(b, d)  # the output layer's update is the same for both rules


def test_fa_jacobian_matches_finite_differences_of_the_flow() -> None:
    for p in [(1.0, 1.0), (-0.5, -2.0), (0.3, 1.7)]:
        J = dyn.fa_jacobian(*p, T=1.0, B=0.9)
        h = 1e-6
        num = np.empty((2, 2))
        for j in range(2):
            dp = np.zeros(2)
            dp[j] = h
            fp = np.array(dyn.expected_fa_flow(*(np.array(p) + dp), T=1.0, B=0.9))
            fm = np.array(dyn.expected_fa_flow(*(np.array(p) - dp), T=1.0, B=0.9))
            num[:, j] = (fp - fm) / (2 * h)
        np.testing.assert_allclose(J, num, atol=1e-6)


def test_positive_branch_is_stable_under_fa() -> None:
    ev = dyn.stability(1.0, 1.0, T=1.0, B=1.0)
    assert np.all(ev.real <= 1e-12)
    zero, nonzero = sorted(ev, key=abs)
    assert abs(zero) < 1e-12  # the direction along the line of fixed points
    assert nonzero.real == pytest.approx(-2.0)  # -(B W + W0^2)
    for w0 in np.geomspace(0.1, 5, 20):  # everywhere on the W > 0 branch
        assert max(dyn.stability(w0, 1 / w0).real) <= 1e-12


def test_negative_branch_is_unstable_under_fa_near_the_W_axis_only() -> None:
    # The brief's point (-1, -1) is exactly marginal (a nilpotent Jacobian: both eigenvalues 0) ...
    assert np.max(np.abs(dyn.stability(-1.0, -1.0))) < 1e-6
    # ... the W < 0 branch is unstable for -1 < W0 < 0, e.g. (-0.5, -2): eigenvalues 1.75 and 0 ...
    ev = dyn.stability(-0.5, -2.0)
    assert max(ev.real) == pytest.approx(1.75)
    # ... and stable again for W0 < -1, e.g. (-2, -0.5): eigenvalues 0 and -3.5.
    assert min(dyn.stability(-2.0, -0.5).real) == pytest.approx(-3.5)
    assert max(dyn.stability(-2.0, -0.5).real) <= 1e-12
    assert list(dyn.fa_stable_on_hyperbola(np.array([-2.0, -0.5, 0.5, 2.0]))) == [True, False, True, True]


def test_linear_stability_predicts_what_the_flow_does_after_a_small_kick() -> None:
    """Kick W by 0.02 off a fixed point and run the expected flow for time 2 (200 Euler steps of 0.01)."""

    def run(p: tuple[float, float], rule: str) -> tuple[float, float]:
        tr = dyn.integrate_expected(p[0], p[1] + 0.02, steps=200, eta=0.01, rule=rule)
        residual0 = abs(tr[0, 0] * tr[0, 1] - 1.0)  # = 0.02 |W0|
        return abs(tr[-1, 0] * tr[-1, 1] - 1.0) / residual0, float(np.hypot(*(tr[-1] - p)))

    shrink, _ = run((1.0, 1.0), "fa")  # eigenvalue -2: residual x e^-4 ≈ 0.02
    assert shrink < 0.05
    shrink, _ = run((-2.0, -0.5), "fa")  # eigenvalue -3.5: back onto the hyperbola
    assert shrink < 0.01
    grow, _ = run((-0.5, -2.0), "fa")  # eigenvalue +1.75: FA leaves this fixed point (linear: x e^3.5 ≈ 33)
    assert grow > 5
    end = dyn.integrate_expected(-0.5, -2.0 + 0.02, steps=1000, eta=0.01)[-1]
    assert end[1] > 0 and dyn.on_stable_branch(*end, tol=1e-6)  # ... and ends on the W > 0 branch
    shrink, dist = run((-0.5, -2.0), "bp")  # backprop is stable on both branches (eigenvalue -4.25)
    assert shrink < 0.01 and dist < 0.05


def test_flow_from_near_the_origin_lands_on_the_stable_branch_with_W_of_Bs_sign() -> None:
    for start in [(0.01, 0.01), (-0.01, 0.01), (0.01, -0.01), (-0.01, -0.01), (0.0, 0.05)]:
        tr = dyn.integrate_expected(*start, steps=1000, eta=0.01)
        w0, w = tr[-1]
        assert dyn.on_stable_branch(w0, w, tol=1e-6) and w > 0
        assert (w0, w) == pytest.approx(LANDING, abs=0.03)
    tr = dyn.integrate_expected(0.01, 0.01, steps=1000, eta=0.01, B=-1.0)  # B < 0: lands where W < 0
    assert tr[-1, 1] < 0 and dyn.on_stable_branch(*tr[-1], B=-1.0, tol=1e-6)


def test_single_fa_rule_update_equals_the_hand_computed_update() -> None:
    """ΔW = η e h, ΔW0 = η B e x with h = W0 x, e = T x - W h (preprint Fig. 3), through the project's rule."""
    for W0, W, T, B, x, eta in [(0.3, -0.7, 1.5, 0.8, 1.37, 0.05), (0.01, 0.01, 1.0, 1.0, -0.42, 0.01)]:
        tr = dyn.simulate_fa_111(W0, W, 1, eta, T=T, B=B, inputs=[x])
        h = W0 * x
        e = T * x - W * h
        assert tr.shape == (2, 2)
        assert tuple(tr[0]) == (W0, W)
        np.testing.assert_allclose(tr[1] - tr[0], [eta * B * e * x, eta * e * h], rtol=1e-12, atol=1e-15)


def test_fa_rule_is_the_expected_flow_on_a_random_clock() -> None:
    """Per example the FA update is x^2 times the expected update: Euler steps of η x_k^2 reproduce the rule."""
    xs = dyn.sample_inputs(300, seed=3)
    sim = dyn.simulate_fa_111(0.01, 0.01, 300, 0.01, seed=3)
    assert np.array_equal(sim, dyn.simulate_fa_111(0.01, 0.01, 300, 0.01, inputs=xs))  # same draws
    p = np.array([0.01, 0.01])
    for k, x in enumerate(xs, start=1):
        p = p + 0.01 * x * x * np.array(dyn.expected_fa_flow(*p))
        np.testing.assert_allclose(sim[k], p, rtol=1e-10, atol=1e-12)


def test_fa_rule_on_the_111_network_follows_the_analytic_flow() -> None:
    """The seed-average of the rule's trajectory stays close to the Euler-integrated expected flow.

    Tolerance: after k examples the rule's flow time is η Σ x_i^2 = η k ± η sqrt(2k) (Var x^2 = 2), so its
    timing error at the end of the transient (flow time ≈ 2, k = 1000 at η = 0.002) averaged over K = 8
    seeds is ≈ 0.002 * sqrt(2000 / 8) ≈ 0.03; times the flow speed (≤ 1.3 on this path) that is ≈ 0.04,
    and 0.15 allows well over 3 sd. (Over ten disjoint sets of 8 seeds the largest distance was 0.073.)
    """
    eta, n, seeds = 0.002, 3000, range(8)
    expected = dyn.integrate_expected(0.01, 0.01, n, eta)
    sims = np.stack([dyn.simulate_fa_111(0.01, 0.01, n, eta, seed=s) for s in seeds])
    assert np.max(np.linalg.norm(sims.mean(axis=0) - expected, axis=1)) < 0.15
    for tr in [expected, *sims]:
        w0, w = tr[-1]
        assert abs(w0 * w - 1.0) < 1e-3 and w > 0
        assert (w0, w) == pytest.approx(LANDING, abs=0.03)
    # Not trivially close: a single seed is measurably off the mean path (timing noise is real).
    assert np.max(np.linalg.norm(sims[0] - expected, axis=1)) > 0.01


def test_stability_refuses_points_that_are_not_fixed_points() -> None:
    with pytest.raises(ValueError, match="not a fixed point"):
        dyn.stability(1.0, 2.0)


def test_summarise_dynamics_reports_landing_on_the_stable_branch() -> None:
    s = dyn.summarise_dynamics(n_examples=600, eta=0.02)
    json.dumps(s)  # plain numbers only
    for name in ("expected", "fa_rule"):
        assert s[name]["on_stable_branch"] and s[name]["W_same_sign_as_B"]
        assert s[name]["W0_W"] == pytest.approx(1.0, abs=1e-3)
    assert s["eigenvalues"]["(1, 1)"] == pytest.approx([0.0, -2.0], abs=1e-9)
    assert s["eigenvalues"]["(-0.5, -2)"] == pytest.approx([1.75, 0.0], abs=1e-9)
    assert s["unstable_W0_interval"] == pytest.approx([-1.0, 0.0])


def test_plot_dynamics_writes_nonempty_png_and_pdf(tmp_path) -> None:
    paths = dyn.plot_dynamics(tmp_path / "fig" / "fa_111", eta=0.025, n_examples=400)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert pdf.startswith(b"%PDF") and len(pdf) > 5_000


def test_the_fig3_claim_fails_when_the_trajectory_lands_on_the_other_stable_branch(tmp_path) -> None:
    """The claim is "ends on the stable branch with W > 0 (sign of B)". Part of the W < 0 branch (W0 < -1) is
    stable too: a trajectory started there lands on it, and the verdict must then say the claim does not hold."""
    import pandas as pd
    from conftest import REPO_CONFIG

    from biocredit import cli

    args = ["analysis", "--config", str(REPO_CONFIG), "--set", f"results_dir={tmp_path}", "--scale", "smoke",
            "--analysis", "lillicrap_111"]
    assert cli.main(args) == 0
    table = tmp_path / "smoke" / "tables" / "lillicrap_111_comparison.csv"
    assert pd.read_csv(table)["verdict"].item() == "holds"
    # the figure is named after the paper's (config `name`); the workflow makes the figure and the tables in two
    # jobs (--part)
    figure = tmp_path / "smoke" / "figures" / "lillicrap_111_fig3_dynamics.png"
    assert figure.is_file() and figure.with_suffix(".pdf").is_file()
    figure.unlink()
    table.unlink()
    assert cli.main([*args, "--part", "tables"]) == 0 and table.is_file() and not figure.exists()
    table.unlink()
    assert cli.main([*args, "--part", "figure"]) == 0 and figure.is_file() and not table.exists()
    assert cli.main([*args, "--set", "analyses.lillicrap_111.start=[-2.0,-0.6]"]) == 0
    summary = json.loads((tmp_path / "smoke" / "tables" / "lillicrap_111_summary.json").read_text())
    end = summary["expected"]
    assert end["on_stable_branch"] and end["W"] < 0  # on the stable part of the other branch...
    assert pd.read_csv(table)["verdict"].item() == "does NOT hold"  # ...which is not what the paper claims
