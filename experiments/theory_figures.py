"""The Theory page's figures: Proposition 2, Lemma 1 against Monte Carlo, Figure 1 style paths.

Writes four PNGs (default into ``docs/assets/``) and prints how closely the
Monte Carlo simulation (the library's own ``lc.sgd`` and
``lc.lookahead(lc.sgd(lr=γ), k, α)``, many independent chains at once) agrees
with the closed forms of ``lookahead_core.theory``:

* ``theory_variance_ratio.png``: V*_LA / V*_SGD against α for k ∈ {1, 5, 10, 20}
  at three values of γa (eq. 0.9), with the k → ∞ limit α/(2 − α) and
  simulated stationary variances for k = 5;
* ``theory_nqm_loss.png``: expected loss over steps for SGD and Lookahead(SGD)
  on a 20-dimensional noisy quadratic, theory as lines (eq. 0.7 of the exact
  moment recurrences) and simulation as points (the paper's Figure 2 style);
* ``theory_trajectories.png``: fast and slow weights of Lookahead(SGD) on an
  ill-conditioned 2-D quadratic, next to SGD alone (the paper's Figure 1 style);
* ``theory_outer.png``: Lookahead with an outer SGD with momentum μ (heavy ball
  or Nesterov, the SNOO/DiLoCo outer loop): stationary variance relative to
  SGD's and the mean's convergence rate per inner step against μ, for
  k ∈ {1, 5, 20} at γa = 0.5 and 0.05, with simulated stationary variances
  (the library's ``lookahead(sgd, k, outer=sgd(...))``) for k = 5.

Run ``python experiments/theory_figures.py`` (or ``make figures``); it takes
well under a minute on two CPU cores. ``--quick`` shrinks the simulations for
a smoke test.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

import lookahead_core as lc
from lookahead_core import theory

OUT = Path(__file__).resolve().parent.parent / "docs" / "assets"
KS = (1, 5, 10, 20)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def variance_ratio_figure(out: Path, quick: bool) -> dict[str, float]:
    """Eq. 0.9 against α; Monte Carlo stationary variances at k = 5."""
    plt = _pyplot()
    steps_ga = np.array([0.05, 0.5, 1.5])  # γa per panel; γ = 1 so a = γa
    sigma2 = np.ones(3)
    alphas = np.linspace(0.005, 1.0, 400)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for j, ax in enumerate(axes):
        a = steps_ga[j : j + 1]
        for k in KS:
            ratio = [float(theory.nqm_variance_ratio(a, 1.0, k, al)[0]) for al in alphas]
            ax.plot(alphas, ratio, label=f"k = {k}")
        ax.plot(alphas, alphas / (2 - alphas), "k:", label="k → ∞: α/(2 − α)")
        ax.set_title(f"γa = {steps_ga[j]:g}")
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("V*_LA / V*_SGD")

    # Simulated stationary variances: one run per α, the three panels are three
    # coordinates of one NQM; from V = 0, 250 cycles leave a transient below 2e-5 relative.
    k, chains, cycles = 5, (500 if quick else 10000), (40 if quick else 250)
    sim_alphas = (0.1, 0.25, 0.5, 0.75, 1.0)
    theta0 = np.zeros(3)
    errors = []
    sgd = theory.nqm_simulate(lc.sgd(lr=1.0), theta0, steps_ga, sigma2, k * cycles, chains, seed=1)
    v_sgd_sim = np.asarray(sgd.fast_var[-1])
    v_sgd = np.asarray(theory.nqm_sgd_variance_fixed_point(steps_ga, sigma2, 1.0))
    errors.extend(np.abs(v_sgd_sim / v_sgd - 1))
    for i, alpha in enumerate(sim_alphas):
        opt = lc.lookahead(lc.sgd(lr=1.0), k=k, alpha=alpha)
        sim = theory.nqm_simulate(opt, theta0, steps_ga, sigma2, k * cycles, chains, seed=10 + i)
        v_la = np.asarray(theory.nqm_lookahead_variance_fixed_point(steps_ga, sigma2, 1.0, k, alpha))
        errors.extend(np.abs(np.asarray(sim.slow_var[-1]) / v_la - 1))
        for j, ax in enumerate(axes):
            ax.plot(alpha, float(sim.slow_var[-1][j]) / v_sgd[j], "o", color="C1", mec="k",
                    label="simulation, k = 5" if i == 0 else None)
    axes[-1].legend(loc="upper left", fontsize=8)
    fig.suptitle("Proposition 2: Lookahead's stationary variance relative to SGD's (eq. 0.9)")
    fig.tight_layout()
    fig.savefig(out / "theory_variance_ratio.png", dpi=110)
    plt.close(fig)
    return {"stationary variance, max relative error": float(np.max(errors)),
            "stationary variance, chains": chains}


def nqm_loss_figure(out: Path, quick: bool) -> dict[str, float]:
    """Expected excess loss over steps: exact recurrences (lines) and simulation (points)."""
    plt = _pyplot()
    d = 20
    a = 1.0 / np.arange(1, d + 1)
    sigma2 = a.copy()
    lr, k, alpha = 0.5, 5, 0.5
    steps, chains = (60, 500) if quick else (300, 10000)
    theta0 = np.full(d, 3.0)
    floor = 0.5 * float(np.sum(a * sigma2))  # ½ Σ aσ², the part of eq. 0.7 no optimizer removes

    def excess(mean: Any, var: Any) -> np.ndarray:
        return np.asarray(theory.nqm_expected_loss(mean, var, a, sigma2)) - floor

    sgd_th = theory.nqm_moment_trajectory(theta0, np.zeros(d), a, sigma2, lr, steps)
    la_th = theory.nqm_moment_trajectory(theta0, np.zeros(d), a, sigma2, lr, steps, k, alpha)
    sgd_sim = theory.nqm_simulate(lc.sgd(lr=lr), theta0, a, sigma2, steps, chains, seed=2)
    la_sim = theory.nqm_simulate(lc.lookahead(lc.sgd(lr=lr), k=k, alpha=alpha),
                                 theta0, a, sigma2, steps, chains, seed=3)
    curves = {
        "SGD": (excess(sgd_th.fast_mean, sgd_th.fast_var), excess(sgd_sim.fast_mean, sgd_sim.fast_var)),
        "Lookahead, fast θ": (excess(la_th.fast_mean, la_th.fast_var),
                              excess(la_sim.fast_mean, la_sim.fast_var)),
        "Lookahead, slow φ": (excess(la_th.slow_mean, la_th.slow_var),
                              excess(la_sim.slow_mean, la_sim.slow_var)),
    }
    v_sgd = theory.nqm_sgd_variance_fixed_point(a, sigma2, lr)
    v_la = theory.nqm_lookahead_variance_fixed_point(a, sigma2, lr, k, alpha)
    stationary = {"SGD": 0.5 * float(np.sum(a * v_sgd)),
                  "Lookahead, slow φ": 0.5 * float(np.sum(a * v_la))}

    x = np.arange(steps + 1)
    styles = {"SGD": dict(color="C0", lw=2), "Lookahead, fast θ": dict(color="C1", lw=0.8),
              "Lookahead, slow φ": dict(color="C3", lw=2)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw=dict(width_ratios=[1.6, 1]))
    zoom = min(40, steps)
    for ax, last, every in ((axes[0], steps, 10), (axes[1], zoom, 1)):
        for label, (th, sim) in curves.items():
            if label == "Lookahead, fast θ" and ax is axes[0]:
                continue  # it zig-zags every cycle; the zoom shows it
            ax.plot(x[: last + 1], th[: last + 1], **styles[label], label=f"{label}: theory")
            points = x[1 : last + 1 : every] if label != "Lookahead, slow φ" else x[k : last + 1 : k]
            ax.plot(points, sim[points], "o", ms=4, color=styles[label]["color"], mec="k", mew=0.4,
                    label=f"{label}: simulation")
        ax.set_yscale("log")
        ax.set_xlabel("inner steps")
        ax.grid(alpha=0.3, which="both")
    for label, value in stationary.items():
        axes[0].axhline(value, color=styles[label]["color"], ls=":", lw=1.2)
    axes[0].set_ylabel("expected loss − ½ Σ aᵢσᵢ²  (eq. 0.7)")
    axes[0].set_title("SGD and Lookahead's slow weights (dotted: Proposition 2's stationary values)",
                      fontsize=10)
    axes[1].set_title(f"first {zoom} steps, with the fast weights", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Noisy quadratic: d = {d}, aᵢ = σᵢ² = 1/i, θ₀ = 3, γ = {lr}, k = {k}, α = {alpha}; "
                 f"simulation: {chains} chains")
    fig.tight_layout()
    fig.savefig(out / "theory_nqm_loss.png", dpi=110)
    plt.close(fig)
    results = {f"excess loss, {label}: max relative error over steps":
               float(np.max(np.abs(sim[1:] / th[1:] - 1))) for label, (th, sim) in curves.items()}
    results["loss simulation, chains"] = chains
    return results


def _paths(A: np.ndarray, rot: np.ndarray, start: np.ndarray, lr: float, k: int, alpha: float,
           steps: int, noise_std: np.ndarray, seed: int) -> dict[str, Any]:
    """SGD alone and Lookahead(SGD) on ½(x − c)ᵀA(x − c), c = R·diag(σ)·z, the same draws for both."""
    draws = np.random.default_rng(seed).standard_normal((steps, 2)) * noise_std

    def grad(x: np.ndarray, step: int) -> tuple[np.ndarray]:
        return (A @ (x - rot @ draws[step]),)

    opt = lc.lookahead(lc.sgd(lr=lr), k=k, alpha=alpha)
    params = (start.copy(),)
    state = opt.init(params)
    fast, slow, ends = [start], [start], []
    for step in range(steps):
        phi = state.slow[0]
        params, state = opt.step(params, grad(params[0], step), state)
        if state.count == 0:
            # step() returns the synced weights; θ_{t,k} follows from φ_t = φ + α(θ_{t,k} − φ)
            theta_k = phi + (state.slow[0] - phi) / alpha
            ends.append((phi, theta_k))
            fast.append(theta_k)
            slow.append(state.slow[0])
        fast.append(params[0])
    sgd = lc.sgd(lr=lr)
    x, sgd_state, sgd_path = (start.copy(),), sgd.init((start,)), [start]
    for step in range(steps):
        delta, sgd_state = sgd.update(grad(x[0], step), sgd_state, x)
        x = (x[0] + delta[0],)
        sgd_path.append(x[0])
    return dict(fast=np.array(fast), slow=np.array(slow), ends=ends, sgd=np.array(sgd_path))


def trajectory_figure(out: Path) -> dict[str, float]:
    """Fast and slow weights on a quadratic with eigenvalues 1 and 20, rotated 30°."""
    plt = _pyplot()
    angle = math.radians(30.0)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    A = rot @ np.diag([1.0, 20.0]) @ rot.T
    start = rot @ np.array([-3.0, 0.6])
    k, alpha = 5, 0.5
    panels = [
        ("full-batch gradients, γ = 0.09 (γλ_max = 1.8)", 0.09, np.zeros(2), 40),
        ("noisy gradients (NQM, σ = 0.3, 0.3), γ = 0.06", 0.06, np.array([0.3, 0.3]), 80),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.0))
    X, Y = np.meshgrid(np.linspace(-3.2, 1.0, 300), np.linspace(-2.0, 1.0, 220))
    Z = 0.5 * (A[0, 0] * X**2 + 2 * A[0, 1] * X * Y + A[1, 1] * Y**2)
    loss = lambda x: 0.5 * float(x @ A @ x)  # noqa: E731
    results = {}
    for ax, (title, lr, noise_std, steps) in zip(axes, panels):
        paths = _paths(A, rot, start, lr, k, alpha, steps, noise_std, seed=4)
        fast, slow, sgd_path = paths["fast"], paths["slow"], paths["sgd"]
        ax.contour(X, Y, Z, levels=np.geomspace(0.005, 30, 14), colors="0.8", linewidths=0.8)
        ax.plot(sgd_path[:, 0], sgd_path[:, 1], "-", color="0.5", lw=0.9, label="SGD alone")
        ax.plot(fast[:, 0], fast[:, 1], ".-", color="C0", lw=0.9, ms=3.5,
                label="Lookahead: fast weights θ")
        for i, (phi, theta_k) in enumerate(paths["ends"]):
            ax.plot([phi[0], theta_k[0]], [phi[1], theta_k[1]], "--", color="C3", lw=0.8,
                    label="φ → θ_{t,k}: the sync moves α of the way" if i == 0 else None)
        ax.plot(slow[:, 0], slow[:, 1], "o-", color="C3", ms=6, mec="k", lw=2,
                label="Lookahead: slow weights φ")
        ax.plot(0, 0, "k*", ms=12)
        ax.set_aspect("equal")
        ax.set_xlim(-3.2, 1.0)
        ax.set_ylim(-2.0, 1.0)
        ax.set_title(f"{title}, {steps} steps", fontsize=10)
        kind = "full batch" if not noise_std.any() else "noisy"
        results[f"2-D quadratic ({kind}): final loss SGD / slow weights"] = (
            loss(sgd_path[-1]) / loss(slow[-1]))
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"L(x) = ½xᵀAx, eigenvalues 1 and 20; Lookahead(SGD) with k = {k}, α = {alpha}")
    fig.tight_layout()
    fig.savefig(out / "theory_trajectories.png", dpi=110)
    plt.close(fig)
    return results


def outer_momentum_figure(out: Path, quick: bool) -> dict[str, float]:
    """Outer SGD with momentum on the NQM: stationary variance and mean rate against μ."""
    plt = _pyplot()
    lr = 0.5
    curvatures = (1.0, 0.1)  # γa = 0.5 (as a₁ of the loss figure) and 0.05 (low curvature)
    mus = np.linspace(0.0, 0.95, 191)
    variants = [  # (label, η, Nesterov, line style)
        ("Nesterov, η = 0.7", 0.7, True, "-"),
        ("Nesterov, η = α = 0.5", 0.5, True, "--"),
        ("heavy ball, η = 0.7", 0.7, False, ":"),
    ]
    outer_ks = (1, 5, 20)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.2), sharex=True)
    for row, a_value in enumerate(curvatures):
        a = np.array([a_value])
        ax_v, ax_r = axes[row]
        for i, k in enumerate(outer_ks):
            for label, eta, nesterov, style in variants:
                ratio = [float(theory.nqm_outer_variance_ratio(a, lr, k, eta, mu, nesterov)[0])
                         for mu in mus]
                rate = [float(theory.nqm_outer_rate(a, lr, k, eta, mu, nesterov).per_step[0])
                        for mu in mus]
                lw = 1.8 if style == "-" else 1.2
                ax_v.plot(mus, ratio, style, color=f"C{i}", lw=lw)
                ax_r.plot(mus, rate, style, color=f"C{i}", lw=lw)
                ax_v.plot(0.0, ratio[0], "o", color=f"C{i}", mec="k", ms=5)
                ax_r.plot(0.0, rate[0], "o", color=f"C{i}", mec="k", ms=5)
        ax_v.axhline(1.0, color="0.4", lw=1.0)
        ax_r.axhline(abs(1.0 - lr * a_value), color="0.4", lw=1.0)
        ax_v.set_yscale("log")
        ax_v.set_ylabel(f"γa = {lr * a_value:g}\nV*_outer / V*_SGD")
        ax_r.set_ylabel("mean's rate per inner step")
        for ax in (ax_v, ax_r):
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_title("stationary variance of φ relative to SGD's (grey: SGD)", fontsize=10)
    axes[0, 1].set_title("mean's rate per inner step, radius^(1/k) (grey: SGD's |1 − γa|)",
                         fontsize=10)
    for ax in axes[1]:
        ax.set_xlabel("outer momentum μ")

    # Monte Carlo with the library's own lookahead(sgd, k, outer=sgd(momentum, nesterov)):
    # k = 5, Nesterov, η = 0.7; the slowest of these has radius 0.87 per cycle, so after
    # 100 cycles from V = 0 the transient is below 1e-12 relative.
    k, eta, chains, cycles = 5, 0.7, (500 if quick else 10000), (30 if quick else 100)
    a_all, sigma2 = np.array(curvatures), np.ones(2)
    errors = []
    for j, mu in enumerate((0.0, 0.5, 0.9)):
        outer = lc.sgd(lr=eta, momentum=mu, nesterov=mu > 0)  # μ = 0: torch needs nesterov off
        opt = lc.lookahead(lc.sgd(lr=lr), k=k, outer=outer)
        sim = theory.nqm_simulate(opt, np.zeros(2), a_all, sigma2, k * cycles, chains, seed=20 + j)
        v_sim = np.asarray(sim.slow_var[-1])
        v_th = np.asarray(theory.nqm_outer_stationary_variance(a_all, sigma2, lr, k, eta, mu, True))
        errors.extend(np.abs(v_sim / v_th - 1))
        v_sgd = np.asarray(theory.nqm_sgd_variance_fixed_point(a_all, sigma2, lr))
        for row in range(2):
            axes[row, 0].plot(mu, v_sim[row] / v_sgd[row], "s", color="C1", mec="k", ms=6,
                              label="simulation, k = 5, Nesterov, η = 0.7" if j == 0 else None)

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i}", lw=1.8, label=f"k = {k_}")
               for i, k_ in enumerate(outer_ks)]
    handles += [Line2D([], [], color="k", ls=style, lw=1.2, label=label)
                for label, _, _, style in variants]
    handles += [Line2D([], [], ls="", marker="o", color="0.7", mec="k",
                       label="μ = 0: Lookahead with α = η")]
    axes[0, 1].legend(handles=handles, fontsize=8, loc="lower right")
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Lookahead(SGD, γ = {lr}) with an outer SGD with momentum on the NQM")
    fig.tight_layout()
    fig.savefig(out / "theory_outer.png", dpi=110)
    plt.close(fig)
    return {"outer momentum stationary variance, max relative error": float(np.max(errors)),
            "outer momentum stationary variance, chains": chains}


def main(out: Path = OUT, quick: bool = False) -> dict[str, float]:
    """Write the four figures into ``out``; return the agreement figures printed."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    for make in (lambda: variance_ratio_figure(out, quick),
                 lambda: nqm_loss_figure(out, quick),
                 lambda: trajectory_figure(out),
                 lambda: outer_momentum_figure(out, quick)):
        results.update(make())
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    parser.add_argument("--quick", action="store_true", help="small simulations (smoke test)")
    args = parser.parse_args()
    began = time.perf_counter()
    for name, value in main(args.out, args.quick).items():
        print(f"{name:55s} {value:.4g}")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('theory_*.png')))} "
          f"into {args.out} in {time.perf_counter() - began:.1f} s")
