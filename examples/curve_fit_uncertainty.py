"""A curve fit with error bars: standard errors, correlations and a confidence band.

The model of scipy's ``curve_fit`` documentation, y = a·exp(−b·x) + c, is fitted to
40 measurements whose standard deviations σ_k are known (they grow with x, as for a
detector whose noise rises along the sweep). ``trustls.curve_fit`` returns the
estimate and its covariance; because σ is known, ``absolute_sigma=True`` and the
covariance is (JᵀJ)⁻¹ of the whitened residuals (see ``docs/curve-fitting.md``).

From the covariance C the script prints the standard errors √C_ii and the
correlations, and draws the 95% confidence band of the fitted curve by the delta
method: var f(x; β̂) ≈ g(x)ᵀ C g(x), g = ∂f/∂β at β̂, computed for a whole grid of
x with one ``torch.func.jacfwd``. The band is pointwise (for each x separately) and
rests on the linearization of f, like the standard errors themselves.

The second part fits data of the same kind with four outliers (6 to 12 σ off), by
least squares and with scipy's robust ``loss="soft_l1"`` (``f_scale=1``: the
residuals are already divided by σ, so the loss turns from quadratic to linear
about one σ out), inside the physical bounds a, b, c ≥ 0. It prints both fits and
the weight each point gets, draws ``docs/img/curve_fit_robust.png``, and shows what
a bound that binds does to the covariance (``Result.active_mask``).

``--monte-carlo N`` checks the standard errors by simulation: N data sets drawn
with the same σ, each fitted; the spread of the N estimates should match the
reported standard errors, and the 95% intervals ``estimate ± 1.96·se`` should cover
the true values about 95% of the time. It does the same for the outlier data, with
least squares and with soft_l1.

Run it with::

    python examples/curve_fit_uncertainty.py [--out docs/img/curve_fit.png]
        [--robust-out docs/img/curve_fit_robust.png] [--monte-carlo 1000]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import trustls

TRUE = (2.5, 1.3, 0.5)
SEED = 2


def decay(x, a, b, c):
    return a * torch.exp(-b * x) + c


def measurements(m: int = 40, seed: int = SEED):
    """Data from the true curve with Gaussian noise of known, growing standard deviation."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 4, m, dtype=torch.float64)
    sigma = 0.04 + 0.03 * x
    y = decay(x, *TRUE) + sigma * torch.randn(m, generator=generator, dtype=torch.float64)
    return x, y, sigma


def confidence_band(x_grid, popt, pcov, level: float = 0.95):
    """The fitted curve on x_grid and the half-width of its pointwise confidence band (delta method)."""
    curve = decay(x_grid, *popt)
    G = torch.func.jacfwd(lambda p: decay(x_grid, *p))(popt)  # (grid, n): ∂f/∂β at each x
    variance = ((G @ pcov) * G).sum(dim=1)  # diag(G C Gᵀ) without the grid × grid matrix
    # σ is known (absolute_sigma=True): the normal quantile, not Student's t.
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2, dtype=torch.float64))
    return curve, z * variance.sqrt()


def report(popt, pcov, x, y, sigma) -> None:
    se = pcov.diagonal().sqrt()
    print("parameter      true   estimate   std. error   (estimate - true) / std. error")
    for name, true, value, error in zip("abc", TRUE, popt.tolist(), se.tolist()):
        print(f"{name:>9}{true:>10.3f}{value:>11.4f}{error:>13.4f}{(value - true) / error:>17.2f}")
    correlation = pcov / torch.outer(se, se)
    print("\ncorrelations:")
    for name, row in zip("abc", correlation.tolist()):
        print(f"{name:>9}  " + "  ".join(f"{v:+.3f}" for v in row))
    chi2 = float(((decay(x, *popt) - y) / sigma).square().sum())
    m, n = x.shape[0], popt.shape[0]
    print(f"\nchi^2 = {chi2:.2f} for m - n = {m - n} degrees of freedom (reduced chi^2 {chi2 / (m - n):.2f})")


def monte_carlo(draws: int) -> None:
    """Refit ``draws`` simulated data sets; compare the spread of the estimates with the standard errors."""
    estimates, errors = [], []
    for seed in range(1000, 1000 + draws):
        x, y, sigma = measurements(seed=seed)
        popt, pcov = trustls.curve_fit(decay, x, y, sigma=sigma, absolute_sigma=True)
        estimates.append(popt)
        errors.append(pcov.diagonal().sqrt())
    estimates, errors = torch.stack(estimates), torch.stack(errors)
    covered = ((estimates - torch.tensor(TRUE, dtype=torch.float64)).abs() <= 1.96 * errors).double().mean(0)
    print(f"\nMonte Carlo, {draws} simulated data sets:")
    print("parameter   std. of estimates   mean std. error   ratio   95% interval coverage")
    for k, name in enumerate("abc"):
        spread, mean_error = float(estimates[:, k].std()), float(errors[:, k].mean())
        print(
            f"{name:>9}{spread:>20.4f}{mean_error:>18.4f}{spread / mean_error:>8.3f}{100 * float(covered[k]):>20.1f}%"
        )


def plot(x, y, sigma, popt, pcov, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_grid = torch.linspace(0, 4, 400, dtype=torch.float64)
    curve, half_width = confidence_band(x_grid, popt, pcov)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    top.errorbar(x, y, yerr=sigma, fmt="o", ms=3, color="0.25", ecolor="0.6", capsize=2, label="data ± σ")
    top.plot(x_grid, decay(x_grid, *TRUE), "--", color="tab:green", lw=1, label="true curve")
    top.plot(x_grid, curve, color="tab:blue", lw=1.5, label="fit")
    top.fill_between(
        x_grid, curve - half_width, curve + half_width, color="tab:blue", alpha=0.25, lw=0, label="95% confidence band"
    )
    se = pcov.diagonal().sqrt()
    text = "\n".join(f"{k} = {v:.3f} ± {e:.3f}" for k, v, e in zip("abc", popt.tolist(), se.tolist()))
    top.text(0.97, 0.95, text, transform=top.transAxes, ha="right", va="top", family="monospace", fontsize=9)
    top.set_ylabel("y")
    top.set_title("trustls.curve_fit: y = a·exp(−b·x) + c, known σ (absolute_sigma=True)")
    top.legend(loc="center right", fontsize=8)
    bottom.axhline(0, color="0.5", lw=0.8)
    bottom.plot(x, (y - decay(x, *popt)) / sigma, "o", ms=3, color="0.25")
    bottom.set_ylabel("(y − fit) / σ")
    bottom.set_xlabel("x")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(f"\nwrote {out}")


# -- outliers, a robust loss and bounds ---------------------------------------------------

OUTLIERS = 4
# Physical bounds: amplitude, rate and offset are non-negative.
BOUNDS = (0.0, math.inf)


def measurements_with_outliers(m: int = 40, seed: int = SEED):
    """``measurements`` with OUTLIERS points moved 6 to 12 σ up or down (glitches of the detector)."""
    x, y, sigma = measurements(m, seed)
    generator = torch.Generator().manual_seed(seed + 10_000)
    index = torch.randperm(m, generator=generator)[:OUTLIERS]
    size = 6 + 6 * torch.rand(OUTLIERS, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(OUTLIERS, generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
    y = y.clone()
    y[index] += sign * size * sigma[index]
    return x, y, sigma, index


def robust_fits(x, y, sigma):
    """Least squares and soft_l1 fits within BOUNDS: {loss: (popt, pcov)}."""
    fits = {}
    for loss in ("linear", "soft_l1"):
        fits[loss] = trustls.curve_fit(decay, x, y, sigma=sigma, absolute_sigma=True, bounds=BOUNDS, loss=loss,
                                       f_scale=1.0)
    return fits


def weights(x, y, sigma, popt):
    """How much each point counts in the soft_l1 fit: ρ′(z) of its whitened residual, 1 for a perfect inlier."""
    z = ((y - decay(x, *popt)) / sigma) ** 2  # f_scale = 1
    return 1 / torch.sqrt(1 + z)


def robust_report(x, y, sigma, index, fits) -> None:
    print(f"\n{OUTLIERS} outliers (points {sorted(index.tolist())}), bounds a, b, c >= 0:")
    print("parameter      true   least squares (z)           soft_l1 (z)")
    (p_ls, c_ls), (p_r, c_r) = fits["linear"], fits["soft_l1"]
    se_ls, se_r = c_ls.diagonal().sqrt(), c_r.diagonal().sqrt()
    for k, name in enumerate("abc"):
        true = TRUE[k]
        print(
            f"{name:>9}{true:>10.3f}   {float(p_ls[k]):.4f} ± {float(se_ls[k]):.4f} ({(float(p_ls[k]) - true) / float(se_ls[k]):+.2f})"
            f"   {float(p_r[k]):.4f} ± {float(se_r[k]):.4f} ({(float(p_r[k]) - true) / float(se_r[k]):+.2f})"
        )
    w = weights(x, y, sigma, p_r)
    inliers = torch.ones_like(w, dtype=torch.bool)
    inliers[index] = False
    print(f"soft_l1 weights: outliers {', '.join(f'{v:.2f}' for v in w[index].tolist())}; "
          f"inliers {float(w[inliers].min()):.2f} to {float(w[inliers].max()):.2f}")
    # The same fit through least_squares: its Result knows which bounds are active.
    def residual(p):
        return (decay(x, *p) - y) / sigma

    tight = trustls.least_squares(residual, [1.0, 1.0, 1.0], bounds=([0, 0, 0], [math.inf, 1.2, math.inf]),
                                  loss="soft_l1")
    free = tight.active_mask == 0
    J = tight.jac
    print("\nWith the rate capped at b <= 1.2, the bound binds:")
    print(f"  x = {[round(v, 4) for v in tight.x.tolist()]}, active_mask = {tight.active_mask.tolist()}")
    print(f"  standard errors, all columns of J (scipy's pcov): {[round(v, 4) for v in tight.standard_errors(absolute_sigma=True).tolist()]}")
    held = trustls.covariance.standard_errors(J[:, free], absolute_sigma=True)
    print(f"  standard errors of a and c with b held at its bound: {[round(v, 4) for v in held.tolist()]}")


def robust_monte_carlo(draws: int) -> None:
    """Refit ``draws`` outlier data sets by least squares and soft_l1: spread against reported errors, coverage."""
    truth = torch.tensor(TRUE, dtype=torch.float64)
    results = {loss: ([], []) for loss in ("linear", "soft_l1")}
    for seed in range(1000, 1000 + draws):
        x, y, sigma, _ = measurements_with_outliers(seed=seed)
        for loss, (popt, pcov) in robust_fits(x, y, sigma).items():
            results[loss][0].append(popt)
            results[loss][1].append(pcov.diagonal().sqrt())
    print(f"\nMonte Carlo, {draws} simulated data sets with {OUTLIERS} outliers each:")
    print("loss      parameter   std. of estimates   mean std. error   ratio   95% interval coverage")
    for loss, (estimates, errors) in results.items():
        estimates, errors = torch.stack(estimates), torch.stack(errors)
        covered = ((estimates - truth).abs() <= 1.96 * errors).double().mean(0)
        for k, name in enumerate("abc"):
            spread, mean_error = float(estimates[:, k].std()), float(errors[:, k].mean())
            print(f"{loss:<10}{name:>9}{spread:>20.4f}{mean_error:>18.4f}{spread / mean_error:>8.3f}"
                  f"{100 * float(covered[k]):>20.1f}%")


def plot_robust(x, y, sigma, index, fits, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_grid = torch.linspace(0, 4, 400, dtype=torch.float64)
    (p_ls, _), (p_r, c_r) = fits["linear"], fits["soft_l1"]
    curve, half_width = confidence_band(x_grid, p_r, c_r)
    w = weights(x, y, sigma, p_r)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    inliers = torch.ones_like(w, dtype=torch.bool)
    inliers[index] = False
    top.errorbar(x[inliers], y[inliers], yerr=sigma[inliers], fmt="o", ms=3, color="0.25", ecolor="0.6", capsize=2,
                 label="data ± σ")
    top.errorbar(x[index], y[index], yerr=sigma[index], fmt="o", ms=4, color="tab:red", ecolor="tab:red", capsize=2,
                 label="outliers")
    top.plot(x_grid, decay(x_grid, *TRUE), "--", color="tab:green", lw=1, label="true curve")
    top.plot(x_grid, decay(x_grid, *p_ls), ":", color="tab:orange", lw=1.5, label="least squares")
    top.plot(x_grid, curve, color="tab:blue", lw=1.5, label='loss="soft_l1"')
    top.fill_between(x_grid, curve - half_width, curve + half_width, color="tab:blue", alpha=0.25, lw=0,
                     label="95% band (soft_l1)")
    se = c_r.diagonal().sqrt()
    text = "\n".join(f"{k} = {v:.3f} ± {e:.3f}" for k, v, e in zip("abc", p_r.tolist(), se.tolist()))
    top.text(0.97, 0.95, text, transform=top.transAxes, ha="right", va="top", family="monospace", fontsize=9)
    top.set_ylabel("y")
    top.set_title("trustls.curve_fit with outliers: least squares and soft_l1, bounds a, b, c ≥ 0")
    top.legend(loc="lower left", fontsize=8)
    bottom.axhline(0, color="0.5", lw=0.8)
    points = bottom.scatter(x, (y - decay(x, *p_r)) / sigma, c=w, cmap="viridis", vmin=0, vmax=1, s=14)
    figure.colorbar(points, ax=bottom, label="weight ρ′", pad=0.01)
    bottom.set_ylabel("(y − fit) / σ")
    bottom.set_xlabel("x")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(f"\nwrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    images = Path(__file__).resolve().parents[1] / "docs/img"
    parser.add_argument("--out", type=Path, default=images / "curve_fit.png")
    parser.add_argument("--robust-out", type=Path, default=images / "curve_fit_robust.png")
    parser.add_argument(
        "--monte-carlo", type=int, default=0, metavar="N", help="check the errors on N simulated data sets"
    )
    args = parser.parse_args()
    x, y, sigma = measurements()
    popt, pcov = trustls.curve_fit(decay, x, y, sigma=sigma, absolute_sigma=True)
    report(popt, pcov, x, y, sigma)
    x_o, y_o, sigma_o, index = measurements_with_outliers()
    fits = robust_fits(x_o, y_o, sigma_o)
    robust_report(x_o, y_o, sigma_o, index, fits)
    try:
        plot(x, y, sigma, popt, pcov, args.out)
        plot_robust(x_o, y_o, sigma_o, index, fits, args.robust_out)
    except ImportError:
        print("\n(matplotlib is not installed: no figure; pip install matplotlib)")
    if args.monte_carlo:
        monte_carlo(args.monte_carlo)
        robust_monte_carlo(args.monte_carlo)


if __name__ == "__main__":
    main()
