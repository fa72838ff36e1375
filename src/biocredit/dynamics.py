"""Learning dynamics of feedback alignment in the 1-1-1 linear network.

Lillicrap, Cownden, Tweed, Akerman (2016), preprint (arXiv 1411.0247v1) Fig. 3 = Nature
Communications Fig. 4: a network with one linear input, one linear hidden unit and one linear output,

    h = W0 x,   y = W h,   target y* = T x,   e = y* - y,   L = 1/2 e^2,   x ~ N(0, 1),

trained online by feedback alignment (FA) with a fixed scalar feedback weight B:

    ΔW = η e h,        ΔW0 = η B e x          (per example; backprop has W in place of B).

Since e = (T - W W0) x, the per-example updates are x^2 times the expected (mean) updates; with
E[x^2] = 1 the expected flow is

    FA:  dW0/dt = B (T - W W0),    dW/dt = W0 (T - W W0)
    BP:  dW0/dt = W (T - W W0),    dW/dt = W0 (T - W W0).

Every point of the hyperbola W0 W = T is a fixed point of both flows. Facts used below (derived
here, not quoted from the paper):

* FA conserves W - W0^2 / (2B) (dW/dW0 = W0 / B), so FA trajectories are parabolas; BP conserves
  W^2 - W0^2 (hyperbolas).
* The FA Jacobian at a fixed point has eigenvalues 0 (along the hyperbola) and
  -(B W + W0^2) = -(B T / W0 + W0^2). With B = T = 1 the W > 0 branch is stable everywhere, as the
  paper says (there eWBe > 0). The W < 0 branch is unstable for -1 < W0 < 0 (i.e. W < -1), marginal
  at (-1, -1) (both eigenvalues 0), and *stable* again for W0 < -1 (-1 < W < 0): the paper's
  condition eWBe > 0 is sufficient, not necessary, for stability.
* From near (0, 0), T - W W0 ≈ T > 0 drives W0 along sign(B T) while W ≈ W0^2 / (2B) grows with the
  sign of B, so FA lands on the branch where W has the sign of B: for T = B = 1 at
  W0 = 2^(1/3) ≈ 1.26, W = 2^(-1/3) ≈ 0.79.

The analytic parts are NumPy; :func:`simulate_fa_111` drives the project's own FA rule
(:mod:`biocredit.rules.feedback_alignment`) so the figure also checks that implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from biocredit.figures import save_figure  # noqa: E402
from biocredit.nets import MLP  # noqa: E402
from biocredit.rules import RULES  # noqa: E402

FIGURE_TITLE = "Feedback alignment, 1-1-1 linear network (Lillicrap et al. 2016, preprint Fig. 3)"

ArrayLike = float | np.ndarray


# --- the expected (mean) flows -----------------------------------------------------------------
def expected_fa_flow(W0: ArrayLike, W: ArrayLike, T: float = 1.0, B: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Expected FA updates per unit learning rate (preprint Fig. 3): (dW0, dW) = (B r, W0 r), r = T - W W0.

    Vectorised: ``W0`` and ``W`` may be scalars or arrays of one shape (e.g. a meshgrid).
    """
    W0, W = np.asarray(W0, dtype=float), np.asarray(W, dtype=float)
    r = T - W * W0
    return B * r * np.ones_like(W0), W0 * r


def expected_bp_flow(W0: ArrayLike, W: ArrayLike, T: float = 1.0, B: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Expected backprop updates (gradient descent on E[L]): (dW0, dW) = (W r, W0 r), r = T - W W0.

    ``B`` is accepted (and ignored) so both flows share one signature.
    """
    W0, W = np.asarray(W0, dtype=float), np.asarray(W, dtype=float)
    r = T - W * W0
    return W * r, W0 * r


FLOWS = {"fa": expected_fa_flow, "bp": expected_bp_flow}


def integrate_expected(
    W0_start: float, W_start: float, steps: int, eta: float, T: float = 1.0, B: float = 1.0, rule: str = "fa"
) -> np.ndarray:
    """Euler trajectory of the expected flow, ``(steps + 1, 2)`` rows of (W0, W).

    One step is one example's *expected* update (x^2 replaced by E[x^2] = 1), so ``steps`` examples at
    learning rate ``eta`` cover the flow time ``steps * eta``.
    """
    if rule not in FLOWS:
        raise ValueError(f"unknown rule {rule!r} (known: {', '.join(FLOWS)})")
    flow = FLOWS[rule]
    out = np.empty((steps + 1, 2))
    w0, w = float(W0_start), float(W_start)
    out[0] = w0, w
    for k in range(1, steps + 1):
        d0, d = flow(w0, w, T, B)
        w0, w = w0 + eta * float(d0), w + eta * float(d)
        out[k] = w0, w
    return out


# --- the project's FA rule on the 1-1-1 network ------------------------------------------------
def sample_inputs(n_examples: int, seed: int = 0) -> np.ndarray:
    """The inputs x ~ N(0, 1) that :func:`simulate_fa_111` draws for ``seed`` (float64, shape (n,))."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_examples, generator=g, dtype=torch.float64).numpy()


def make_fa_111(W0: float, W: float, B: float = 1.0) -> tuple[MLP, Any]:
    """A 1-1-1 linear MLP (no biases, float64) with weights (W0, W) and the project's FA rule with B fixed."""
    net = MLP([1, 1, 1], "linear", "linear", bias=False).to(torch.float64)
    with torch.no_grad():
        net.W[0].fill_(W0)
        net.W[1].fill_(W)
    rule = RULES["feedback_alignment"](
        net, {"feedback_init": {"distribution": "uniform", "scale": abs(B)}}, "squared_error", "sum",
        torch.Generator().manual_seed(0),
    )
    rule.B[2] = torch.full((1, 1), float(B), dtype=torch.float64)  # B_2 (shaped like W^T) fixed to exactly B
    return net, rule


def simulate_fa_111(
    W0_start: float,
    W_start: float,
    n_examples: int,
    eta: float,
    T: float = 1.0,
    B: float = 1.0,
    seed: int = 0,
    *,
    inputs: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Online FA on the 1-1-1 network with the project's rule; ``(n_examples + 1, 2)`` rows of (W0, W).

    Per example: ``net.zero_grad``; ``rule.compute_grads(net, x, T x)`` (loss 'squared_error',
    reduction 'sum'); plain SGD ``p -= eta * p.grad``. This is the preprint's ΔW = η e h,
    ΔW0 = η B e x. Inputs are :func:`sample_inputs` ``(n_examples, seed)`` unless ``inputs`` is given
    (then ``n_examples`` must equal its length).
    """
    xs = sample_inputs(n_examples, seed) if inputs is None else np.asarray(inputs, dtype=float)
    if len(xs) != n_examples:
        raise ValueError(f"n_examples={n_examples} but {len(xs)} inputs given")
    net, rule = make_fa_111(W0_start, W_start, B)
    out = np.empty((n_examples + 1, 2))
    out[0] = W0_start, W_start
    for k, xk in enumerate(xs, start=1):
        x = torch.full((1, 1), float(xk), dtype=torch.float64)
        net.zero_grad(set_to_none=True)
        rule.compute_grads(net, x, T * x)
        with torch.no_grad():
            for p in net.parameters():
                if p.grad is not None:
                    p -= eta * p.grad
        out[k] = net.W[0].item(), net.W[1].item()
    return out


# --- stability of the fixed points ---------------------------------------------------------------
def fa_jacobian(W0: float, W: float, T: float = 1.0, B: float = 1.0) -> np.ndarray:
    """Jacobian of the expected FA flow (d/d(W0, W) of (dW0, dW)) at any point.

    With r = T - W W0: [[-B W, -B W0], [r - W0 W, -W0^2]].
    """
    r = T - W * W0
    return np.array([[-B * W, -B * W0], [r - W0 * W, -W0 * W0]], dtype=float)


def stability(W0: float, W: float, T: float = 1.0, B: float = 1.0, tol: float = 1e-6) -> np.ndarray:
    """Eigenvalues of the FA Jacobian at a fixed point (W0 W = T), sorted by real part, largest first.

    On the hyperbola they are 0 (the direction along the line of fixed points) and
    -(B W + W0^2) (across it): the fixed point is stable iff B W + W0^2 > 0. Raises ``ValueError``
    when (W0, W) is not within ``tol`` of the hyperbola, where eigenvalues would not mean stability.
    """
    if abs(W0 * W - T) > tol:
        raise ValueError(f"({W0}, {W}) is not a fixed point: W0*W = {W0 * W} != T = {T}")
    ev = np.linalg.eigvals(fa_jacobian(W0, W, T, B))
    return ev[np.argsort(-ev.real)]


def fa_stable_on_hyperbola(W0: ArrayLike, T: float = 1.0, B: float = 1.0) -> np.ndarray:
    """Whether the fixed point (W0, T / W0) is (linearly) stable under FA: B T / W0 + W0^2 > 0."""
    W0 = np.asarray(W0, dtype=float)
    return B * T / W0 + W0**2 > 0


def on_stable_branch(W0: float, W: float, T: float = 1.0, B: float = 1.0, tol: float = 1e-2) -> bool:
    """True when (W0, W) lies within ``tol`` of W0 W = T at a point that is stable under FA."""
    return bool(abs(W0 * W - T) < tol and fa_stable_on_hyperbola(W0, T, B))


# --- figure and numbers --------------------------------------------------------------------------
def _as_starts(start: tuple[float, float] | Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(start) == 2 and all(np.isscalar(s) for s in start):
        return [(float(start[0]), float(start[1]))]
    return [(float(a), float(b)) for a, b in start]


def _hyperbola_segments(T: float, B: float, lim: float, n: int = 2000) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Pieces (W0, W, stable) of W0 W = T inside the box [-lim, lim]^2, split where FA stability changes."""
    pieces = []
    lo = abs(T) / lim
    for sign in (-1.0, 1.0):
        w0 = sign * np.geomspace(lo, lim, n)
        if sign < 0:
            w0 = w0[::-1]
        w = T / w0
        stable = fa_stable_on_hyperbola(w0, T, B)
        cuts = np.flatnonzero(np.diff(stable.astype(int))) + 1
        for idx in np.split(np.arange(len(w0)), cuts):
            # extend each piece by one sample so neighbouring pieces meet
            j = np.arange(idx[0], min(idx[-1] + 2, len(w0)))
            pieces.append((w0[j], w[j], bool(stable[idx[0]])))
    return pieces


def plot_dynamics(
    out_stem: Path,
    *,
    T: float = 1.0,
    B: float = 1.0,
    grid_lim: float = 2.5,
    start: tuple[float, float] | Sequence[tuple[float, float]] = (0.01, 0.01),
    eta: float = 0.01,
    n_examples: int = 1000,
    seed: int = 0,
    extra_starts: Sequence[tuple[float, float]] = ((-2.4, 2.4), (-0.3, -2.4), (-2.4, 0.7), (-1.2, -1.45)),
) -> list[Path]:
    """The preprint's Fig. 3: expected-FA flow field over (W0, W) with the hyperbola W0 W = T.

    Stable parts of the hyperbola solid, unstable parts dashed (from :func:`fa_stable_on_hyperbola`);
    from each ``start`` the expected-flow trajectory (:func:`integrate_expected`, ``n_examples``
    steps of ``eta``) and the project's FA rule on random examples (:func:`simulate_fa_111`, same start,
    ``seed``); thin purple expected trajectories from ``extra_starts`` (pass ``()`` for none): the
    defaults show the unstable part repelling and the stable part of the W < 0 branch attracting.
    Writes ``out_stem``.png and .pdf (dpi 150) and returns both paths.
    """
    out_stem = Path(out_stem)
    lim = grid_lim
    fig, ax = plt.subplots(figsize=(6.2, 7.4))
    g = np.linspace(-lim, lim, 41)
    G0, G = np.meshgrid(g, g)
    d0, d = expected_fa_flow(G0, G, T, B)
    ax.streamplot(G0, G, d0, d, color="0.65", density=1.2, linewidth=0.6, arrowsize=0.8, zorder=1)
    labelled = {True: False, False: False}
    for w0, w, stable in _hyperbola_segments(T, B, lim):
        label = None
        if not labelled[stable]:
            label = f"W₀W = {T:g}, {'stable' if stable else 'unstable'} under FA"
            labelled[stable] = True
        ax.plot(w0, w, color="tab:blue", lw=2.4, ls="-" if stable else "--", label=label, zorder=3)
    for j, (s0, s1) in enumerate(extra_starts):
        tr = integrate_expected(s0, s1, n_examples, eta, T, B, "fa")
        ax.plot(tr[:, 0], tr[:, 1], color="tab:purple", lw=1.1, zorder=2,
                label="expected FA update, other starts" if j == 0 else None)
        ax.plot(*tr[0], "o", color="tab:purple", ms=3.5, zorder=2)
        ax.plot(*tr[-1], "o", mfc="white", mec="tab:purple", ms=5, zorder=2)
    for i, (s0, s1) in enumerate(_as_starts(start)):
        sim = simulate_fa_111(s0, s1, n_examples, eta, T, B, seed=seed + i)
        exp = integrate_expected(s0, s1, n_examples, eta, T, B, "fa")
        first = i == 0
        ax.plot(sim[:, 0], sim[:, 1], color="tab:green", lw=2.6, alpha=0.6, zorder=4,
                label=f"FA rule, online x ~ N(0,1) (η = {eta:g}, {n_examples} examples)" if first else None)
        ax.plot(exp[:, 0], exp[:, 1], color="tab:red", lw=1.6, ls=(0, (4, 2)), zorder=5,
                label="expected FA update (Euler)" if first else None)
        ax.plot(s0, s1, "k^", ms=6, zorder=6, label="start" if first else None)
        ax.plot(*exp[-1], "o", mfc="white", mec="tab:red", ms=7, zorder=6, label="end (expected)" if first else None)
        ax.plot(*sim[-1], "x", color="tab:green", ms=7, mew=2, zorder=6, label="end (FA rule)" if first else None)
    ax.axhline(0, color="0.8", lw=0.6, zorder=0)
    ax.axvline(0, color="0.8", lw=0.6, zorder=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("W₀ (input → hidden)")
    ax.set_ylabel("W (hidden → output)")
    ax.set_title(f"{FIGURE_TITLE}\nT = {T:g}, B = {B:g}; flow of the expected FA update", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=7, frameon=False)
    return save_figure(fig, Path(out_stem))


def _real_eigs(ev: np.ndarray) -> list[float]:
    if np.max(np.abs(ev.imag)) > 1e-12:
        raise AssertionError(f"complex eigenvalues {ev}")  # cannot happen: the Jacobian has rank <= 1
    return [float(v) for v in ev.real]


def summarise_dynamics(
    *,
    T: float = 1.0,
    B: float = 1.0,
    start: tuple[float, float] = (0.01, 0.01),
    eta: float = 0.01,
    n_examples: int = 1000,
    seed: int = 0,
    points: Sequence[tuple[float, float]] = ((1.0, 1.0), (-1.0, -1.0), (-0.5, -2.0), (-2.0, -0.5)),
) -> dict[str, Any]:
    """Numbers to cite beside the figure (plain floats/bools, JSON-ready).

    Final (W0, W, W0 W) of the expected-flow and FA-rule trajectories from ``start``, whether each ended
    on a stable part of the hyperbola with W of B's sign, the FA Jacobian eigenvalues at ``points``
    (fixed points; (1, 1) and (-1, -1) for T = 1), and the analytic landing point from (0, 0).
    """
    s0, s1 = start
    exp = integrate_expected(s0, s1, n_examples, eta, T, B, "fa")
    sim = simulate_fa_111(s0, s1, n_examples, eta, T, B, seed=seed)
    out: dict[str, Any] = {"T": T, "B": B, "start": [float(s0), float(s1)], "eta": eta, "n_examples": n_examples,
                           "seed": seed}
    for name, tr in (("expected", exp), ("fa_rule", sim)):
        w0, w = (float(v) for v in tr[-1])
        out[name] = {
            "W0": w0, "W": w, "W0_W": w0 * w,
            "on_stable_branch": on_stable_branch(w0, w, T, B),
            "W_same_sign_as_B": bool(np.sign(w) == np.sign(B)),
        }
    out["max_distance_fa_rule_vs_expected"] = float(np.max(np.linalg.norm(sim - exp, axis=1)))
    out["eigenvalues"] = {f"({p0:g}, {p1:g})": _real_eigs(stability(p0, p1, T, B)) for p0, p1 in points}
    # Landing point of the flow from the origin: the parabola W = W0^2/(2B) meets W0 W = T at W0^3 = 2BT.
    w0_star = float(np.cbrt(2 * B * T))
    out["landing_from_origin"] = {"W0": w0_star, "W": T / w0_star}
    # Fixed points are FA-unstable exactly for W0 strictly between 0 and -(B T)^(1/3).
    out["unstable_W0_interval"] = sorted([0.0, float(-np.cbrt(B * T))])
    return out
