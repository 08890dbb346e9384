"""Fitting the roofline to a measured verify grid and scoring it on held-out points: shared by
bench/calibrate_cpu.py and bench/calibrate_real_sizes.py."""

from __future__ import annotations

import torch
from bastion_ext.latency import ModelSpec, RooflineModel, fit_roofline, rmse
from bastion_ext.latency.calibration import VerifyGrid


def held_out_mask(n_points_per_c: int, n_cs: int) -> torch.Tensor:
    """Every third point of the grid in a diagonal pattern, so each n and each c has held-out points."""
    i = torch.arange(n_points_per_c)[None, :]
    j = torch.arange(n_cs)[:, None]
    return ((i + j) % 3 == 0).reshape(-1)


def fit_held_out(spec: ModelSpec, grid: VerifyGrid, uncalibrated: RooflineModel, statistic: str) -> dict:
    """Fit on the training points of ``grid`` (its ``statistic`` per point: median or min) and
    report both models' RMSE on the held-out points, with every point's three times."""
    test = held_out_mask(len(grid.ns), len(grid.cs))
    n, c, seconds = grid.points(statistic)
    fit = fit_roofline(spec, n[~test], c[~test], seconds[~test], start=uncalibrated)
    before = rmse(uncalibrated, n[test], c[test], seconds[test])
    after = rmse(fit.model, n[test], c[test], seconds[test])
    points = [
        {"n": int(n[k]), "c": int(c[k]), "measured_s": float(seconds[k]), "uncalibrated_s": float(u), "calibrated_s": float(f), "held_out": bool(test[k])}
        for k, (u, f) in enumerate(zip(uncalibrated.forward_seconds(n, c).tolist(), fit.model.forward_seconds(n, c).tolist()))
    ]
    held_out_mean = float(seconds[test].mean())
    return {
        **fit.to_dict(),
        "held_out_rmse_s": {"uncalibrated": before, "calibrated": after, "reduction": 1.0 - after / before,
                            "mean_measured_s": held_out_mean, "calibrated_over_mean": after / held_out_mean},
        "points": points,
    }


def plot_fit(fits: dict[str, dict], path) -> None:
    """Measured vs modelled verify time, one panel per model, held-out points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fits), figsize=(5 * len(fits), 4), squeeze=False)
    for ax, (name, fit) in zip(axes[0], fits.items()):
        for cs in sorted({p["c"] for p in fit["points"]}):
            pts = [p for p in fit["points"] if p["c"] == cs]
            ns = [p["n"] for p in pts]
            line, = ax.plot(ns, [1e3 * p["measured_s"] for p in pts], "o", label=f"measured c={cs}")
            ax.plot(ns, [1e3 * p["calibrated_s"] for p in pts], "-", color=line.get_color(), label=f"calibrated c={cs}")
            ax.plot(ns, [1e3 * p["uncalibrated_s"] for p in pts], ":", color=line.get_color())
            held = [p for p in pts if p["held_out"]]
            ax.plot([p["n"] for p in held], [1e3 * p["measured_s"] for p in held], "x", color="black")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("verify tokens n (x: held out; dotted: uncalibrated)")
        ax.set_ylabel("ms per verify forward")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
