"""Figures of a scaling study: error vs compute with the frontier and the fitted law, and
error vs examples seen per model size. They draw a ``vistas.scaling.fit.Study``; the fit
itself knows nothing of them."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from vistas.errors import VistasError
from vistas.scaling import fit as fit_lib

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _models_by_size(rows: list[dict]) -> list[str]:
    """Model labels ordered by parameter count (then by name)."""
    params: dict[str, float] = {}
    for r in rows:
        params[r.get("model")] = float(r.get("params") or 0)
    return sorted(params, key=lambda m: (params[m], str(m)))


def _model_label(rows: list[dict], model: str) -> str:
    p = next((r.get("params") for r in rows if r.get("model") == model), None)
    return f"{model} ({p / 1e3:.0f}k params)" if p else str(model)


def _colours(models: list[str]) -> dict[str, Any]:
    cmap = _plt().get_cmap("viridis")
    return {m: cmap(i / max(len(models) - 1, 1) * 0.9) for i, m in enumerate(models)}


def _sizes(rows: list[dict]) -> list[Any]:
    return sorted({r.get("data_size") for r in rows},
                  key=lambda s: (s == "full" or s is None, s if isinstance(s, (int, float)) else 0))


def check_columns(rows: list[dict], where: Any, *, plot: Any = None, examples_plot: Any = None) -> None:
    """One line, before any fit, for a results table the figures asked for cannot draw:
    both colour runs by their ``model`` column, and ``examples_plot`` puts ``examples_seen``
    on its x axis."""
    needed = []
    if plot or examples_plot:
        needed.append(("model", "--plot" if plot else "--examples-plot", "colours the runs by"))
    if examples_plot:
        needed.append(("examples_seen", "--examples-plot", "puts on its x axis"))
    for column, option, use in needed:
        if not any(r.get(column) not in (None, "") for r in rows):
            raise VistasError(f"{where} has no {column!r} column, which {option} {use}; add it, "
                              f"or leave out {option}")


def _save(fig: Any, path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_fit(rows: list[dict], report: dict[str, Any], draws: dict[str, np.ndarray],
             path: str | pathlib.Path) -> pathlib.Path:
    """Log-log error vs x: every run (colour: model size; marker: data size), the Pareto
    frontier, the fitted law with its 95% bootstrap band, and the extrapolation check (the
    law fitted on the lower part, dashed, and the held-out frontier points it predicts)."""
    plt = _plt()
    xcol, y = report["x_column"], report["y"]
    models, sizes = _models_by_size(rows), _sizes(rows)
    colours = _colours(models)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for r in rows:
        ax.scatter(r[xcol], r[y], color=colours[r.get("model")], s=30, alpha=0.85,
                   marker=_MARKERS[sizes.index(r.get("data_size")) % len(_MARKERS)], zorder=3)
    for m in models:
        ax.scatter([], [], color=colours[m], marker="o", label=_model_label(rows, m))
    for i, s in enumerate(sizes):
        ax.scatter([], [], color="grey", marker=_MARKERS[i % len(_MARKERS)], label=f"data: {s}")
    fx = np.array([p["x"] for p in report["frontier"]])
    fy = np.array([p["y"] for p in report["frontier"]])
    ax.plot(fx, fy, color="black", lw=1, alpha=0.6, zorder=2)
    ax.scatter(fx, fy, facecolors="none", edgecolors="black", s=90, lw=1.2, zorder=4,
               label="Pareto frontier")
    xs = np.logspace(np.log10(fx.min() / 3), np.log10(fx.max() * 10), 200)
    p = report["params"]
    ax.plot(xs, fit_lib.law(xs, p), color="crimson", lw=2, zorder=5,
            label=f"{report['law']} fit: {report['forms'][report['law']]['formula']}")
    if draws and len(next(iter(draws.values()))) > 1:
        curves = np.stack([fit_lib.law(xs, dict(zip(draws, v, strict=True)))
                           for v in zip(*draws.values(), strict=True)])
        lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
        ax.fill_between(xs, lo, hi, color="crimson", alpha=0.15, lw=0, label="95% bootstrap band")
    if "c" in p:
        ax.axhline(p["c"], color="crimson", ls=":", lw=1, label=f"c = {p['c']:.3f} (saturation)")
    check = report["forms"][report["law"]]["extrapolation"]
    if "held_out" in check:
        ax.plot(xs, fit_lib.law(xs, check["params"]), color="darkorange", ls="--", lw=1.5, zorder=5,
                label=f"fit on the {check['fit_on']} lowest frontier points")
        ax.axvline(check["x_split"], color="darkorange", lw=0.8, alpha=0.5)
        hx = [h["x"] for h in check["held_out"]]
        hy = [h["y"] for h in check["held_out"]]
        ax.scatter(hx, hy, marker="x", color="darkorange", s=80, zorder=6,
                   label=f"extrapolated to (mean error {100 * check['mean_rel_error']:.1f}%)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(fit_lib.X_LABELS[report["x"]])
    ax.set_ylabel(y)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save(fig, path)


def plot_examples(rows: list[dict], y: str, path: str | pathlib.Path) -> pathlib.Path:
    """Error vs examples seen: one panel per data size, one line per model size."""
    plt = _plt()
    models, sizes = _models_by_size(rows), _sizes(rows)
    colours = _colours(models)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 4), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], sizes, strict=True):
        for m in models:
            pts = sorted((r["examples_seen"], r[y]) for r in rows if r.get("model") == m
                         and r.get("data_size") == s and isinstance(r.get("examples_seen"), (int, float)))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=colours[m], label=_model_label(rows, m))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"training set: {s}")
        ax.set_xlabel("examples seen")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(y)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_allocation(rows: list[dict], alloc: dict[str, Any], path: str | pathlib.Path) -> pathlib.Path:
    """Two log-log panels of a compute-optimal allocation (``vistas.scaling.fit.allocation``):
    ``y`` against compute for every run (colour: model size) with the frontier and its
    straight-line fit; and the frontier runs' parameters and examples seen against compute
    with the fitted ``C^alpha`` and ``C^beta`` (hollow markers: runs at the sweep's edge)."""
    plt = _plt()
    y = alloc["y"]
    models = _models_by_size(rows)
    colours = _colours(models)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for m in models:
        pts = sorted((r["total_flops"], r[y]) for r in rows if r.get("model") == m
                     and isinstance(r.get("total_flops"), (int, float)) and isinstance(r.get(y), (int, float)))
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=4, lw=0.8, color=colours[m],
                    alpha=0.85, label=_model_label(rows, m))
    front = alloc["frontier"]
    fc = np.array([t["compute"] for t in front])
    ax.scatter(fc, [t["y"] for t in front], facecolors="none", edgecolors="black", s=90, lw=1.2,
               zorder=4, label="Pareto frontier")
    v = alloc["loss_vs_compute"]
    xs = np.logspace(np.log10(fc.min() / 1.5), np.log10(fc.max() * 1.5), 100)
    ax.plot(xs, v["coef"] * xs ** v["slope"], color="crimson", lw=1.5,
            label=f"{y} ∝ C^{v['slope']:.3f} (r² {v['r2']:.2f})")
    ax.set_ylabel(y)
    ax.legend(fontsize=7)
    ex = alloc["exponents"]
    for key, col, colour, name in (("alpha", "params", "tab:blue", "parameters"),
                                   ("beta", "examples_seen", "tab:green", "examples seen")):
        edge = [bool(t["edge"]) for t in front]
        vals = np.array([t[col] for t in front])
        bx.scatter(fc[~np.array(edge)], vals[~np.array(edge)], color=colour, s=40, zorder=3)
        bx.scatter(fc[np.array(edge)], vals[np.array(edge)], facecolors="none", edgecolors=colour,
                   s=40, zorder=3)
        e = ex[key]
        bx.plot(xs, e["coef"] * xs ** e["slope"], color=colour, lw=1.5,
                label=f"{name} ∝ C^{e['slope']:.2f}")
    bx.scatter([], [], facecolors="none", edgecolors="grey", s=40, label="at the sweep's edge")
    bx.set_ylabel("frontier run's parameters / examples seen")
    bx.legend(fontsize=8, title=f"fitted on the {alloc['fit_on']} runs", title_fontsize=8)
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel(fit_lib.X_LABELS["compute"])
        a.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def write_figures(study: fit_lib.Study, *, plot: str | pathlib.Path | None = None,
                  examples_plot: str | pathlib.Path | None = None,
                  allocation_plot: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Writes the figures asked for (``plot``: ``plot_fit``; ``examples_plot``:
    ``plot_examples``; ``allocation_plot``: ``plot_allocation``, for a study fitted with
    its allocation) and records their paths in the study's report, which it returns."""
    report = study.report
    if plot:
        report["plot"] = str(plot_fit(study.runs, report, study.draws, plot))
    if examples_plot:
        report["examples_plot"] = str(plot_examples(study.runs, report["y"], examples_plot))
    if allocation_plot:
        if "allocation" not in report:
            raise VistasError("the allocation figure needs a study fitted with its allocation "
                              "(vistas fit --allocation)")
        report["allocation_plot"] = str(plot_allocation(study.runs, report["allocation"],
                                                        allocation_plot))
    return report


__all__ = ["check_columns", "plot_allocation", "plot_examples", "plot_fit", "write_figures"]
