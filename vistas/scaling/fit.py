"""Pareto frontiers and saturating power-law fits ("Scaling Vision Transformers", Section 3.1).

The law is ``E = a·(C + d)^(-b) + c`` with ``a, b, c, d >= 0``: ``c`` is the irreducible
error, ``b`` the exponent of the power law, and ``d`` shifts the curve so that it flattens
at low compute. It is fitted on the Pareto frontier of error against compute (or examples
seen, or parameters): the runs that no other run beats with less. The residuals are taken
in log space, ``log E_fit - log E``, under a robust (Huber) loss, so every decade of the
frontier counts alike and one bad run does not drag the curve. The simpler forms are
fitted too for comparison: no ``d`` (``a·C^-b + c``), no ``c`` (``a·(C + d)^-b``) and a
pure power law (``a·C^-b``).

Uncertainty: the law is refitted on bootstrap replicates of the frontier (its log
residuals resampled, ``bootstrap``); the 2.5 and 97.5 percentiles of each parameter are
its 95% interval.
Extrapolation check: the law is fitted on the lower-compute part of the frontier and
predicts the rest; the relative error of those predictions says how far the law can be
trusted beyond the runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from vistas.errors import ConfigError, VistasError

FORMS: dict[str, tuple[str, ...]] = {
    "saturating": ("a", "b", "c", "d"),  # a (C + d)^-b + c
    "no_d": ("a", "b", "c"),  # a C^-b + c
    "no_c": ("a", "b", "d"),  # a (C + d)^-b
    "power": ("a", "b"),  # a C^-b
}
MAX_EXPONENT = 10.0  # upper bound of b: a fit that reaches it is a step, not a power law
X_COLUMNS = {"compute": "total_flops", "examples": "examples_seen", "params": "params"}
X_LABELS = {"compute": "training compute (FLOPs)", "examples": "examples seen",
            "params": "parameters"}


def pareto_frontier(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Indices (in increasing x) of the points that no other point beats: none has
    ``x' <= x`` and ``y' < y``, nor ``x' < x`` and ``y' <= y``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.lexsort((y, x))  # by x, ties by y
    keep, best = [], math.inf
    for i in order:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=int)


def law(x: Any, params: dict[str, float]) -> np.ndarray:
    """``a·(x + d)^(-b) + c`` (missing ``c`` or ``d`` count as 0)."""
    x = np.asarray(x, float)
    return params["a"] * (x + params.get("d", 0.0)) ** (-params["b"]) + params.get("c", 0.0)


@dataclasses.dataclass
class Fit:
    form: str
    params: dict[str, float]  # in the units of x and y
    rmse_log: float  # root mean square of log(fit) - log(y) on the fitted points
    n: int
    at_bound: tuple[str, ...] = ()  # parameters the points pushed to a bound: not determined

    def predict(self, x: Any) -> np.ndarray:
        return law(x, self.params)

    def formula(self) -> str:
        p = self.params
        base = f"(C + {p['d']:.3g})" if "d" in p else "C"
        text = f"{p['a']:.4g} * {base}^-{p['b']:.4f}"
        return text + (f" + {p['c']:.4f}" if "c" in p else "")


def _unpack(form: str, theta: np.ndarray) -> dict[str, float]:
    names = FORMS[form]
    p = dict(zip(names, theta, strict=True))
    p["a"] = math.exp(p["a"])  # fitted as log a
    return {k: float(v) for k, v in p.items()}


def _fit_scaled(form: str, u: np.ndarray, y: np.ndarray, starts: list[np.ndarray],
                f_scale: float) -> tuple[np.ndarray, float] | None:
    from scipy.optimize import least_squares

    names = FORMS[form]
    lower = np.array([-np.inf if k == "a" else 0.0 for k in names])
    upper = np.array([{"a": np.inf, "b": MAX_EXPONENT, "c": float(np.max(y)), "d": np.inf}[k]
                      for k in names])
    log_y = np.log(y)

    def residuals(theta):
        pred = law(u, _unpack(form, theta))
        return np.log(np.maximum(pred, 1e-300)) - log_y

    best = None
    for theta0 in starts:
        theta0 = np.clip(theta0, lower, np.where(np.isfinite(upper), upper * (1 - 1e-6), upper))
        try:
            r = least_squares(residuals, theta0, bounds=(lower, upper), loss="huber",
                              f_scale=f_scale, max_nfev=2000)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(r.x)) and (best is None or r.cost < best[1]):
            best = (r.x, float(r.cost))
    return best


def _starts(form: str, u: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    names = FORMS[form]
    mid = len(u) // 2
    out = []
    for b in (0.2, 0.5, 1.0):
        for c in ((0.0, 0.5 * float(np.min(y)), 0.9 * float(np.min(y))) if "c" in names else (0.0,)):
            for d in ((0.0, 0.1, 1.0) if "d" in names else (0.0,)):
                a = max(float(y[mid]) - c, 1e-12) * (u[mid] + d) ** b
                values = {"a": math.log(a), "b": b, "c": c, "d": d}
                out.append(np.array([values[k] for k in names]))
    return out


def fit_law(x: Sequence[float], y: Sequence[float], form: str = "saturating", *,
            f_scale: float = 0.05, start: dict[str, float] | None = None) -> Fit:
    """Fits one form of the law to points ``(x, y)`` (all positive); see the module doc.

    ``start``: parameters to start from (a bootstrap refit starts from the point estimate).
    """
    if form not in FORMS:
        raise VistasError(f"unknown law form {form!r}; use one of {', '.join(FORMS)}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) != len(y):
        raise VistasError(f"x and y differ in length ({len(x)} and {len(y)})")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise VistasError("the law is fitted in log space: every x and y must be finite and > 0")
    if len(x) <= len(FORMS[form]):
        raise VistasError(f"the {form} law has {len(FORMS[form])} parameters and needs more points "
                          f"than that; got {len(x)}")
    scale = float(np.exp(np.mean(np.log(x))))  # fit in x / scale: well-conditioned
    u = x / scale
    if start is not None:
        s = {**start, "a": math.log(start["a"] * scale ** (-start["b"])), "d": start.get("d", 0.0) / scale}
        starts = [np.array([s[k] for k in FORMS[form]])]
    else:
        starts = _starts(form, u, y)
    best = _fit_scaled(form, u, y, starts, f_scale)
    if best is None:
        raise VistasError(f"the {form} law could not be fitted to these {len(x)} points")
    p = _unpack(form, best[0])
    p["a"] *= scale ** p["b"]  # back to the units of x
    if "d" in p:
        p["d"] *= scale
    rmse = float(np.sqrt(np.mean((np.log(law(x, p)) - np.log(y)) ** 2)))
    at_bound = ("b",) if p["b"] >= MAX_EXPONENT * (1 - 1e-3) else ()
    return Fit(form, p, rmse, len(x), at_bound)


def bootstrap(x: Sequence[float], y: Sequence[float], fit: Fit, *, n: int = 200, seed: int = 0,
              f_scale: float = 0.05) -> dict[str, np.ndarray]:
    """Parameters refitted on ``n`` bootstrap replicates of the points: {name: [n']}.

    Residual bootstrap in log space: each replicate keeps the points' x and sets
    ``log y* = log fit(x) + r*`` with ``r*`` drawn with replacement from the fit's log
    residuals (inflated by sqrt(n / (n - k)) for the k fitted parameters). It keeps the
    spread of x that a frontier was chosen for, which resampling the points would not.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    k = len(FORMS[fit.form])
    log_fit = np.log(fit.predict(x))
    resid = (np.log(y) - log_fit) * math.sqrt(len(x) / max(len(x) - k, 1))
    resid -= resid.mean()
    draws: dict[str, list[float]] = {name: [] for name in FORMS[fit.form]}
    for _ in range(n):
        y_star = np.exp(log_fit + rng.choice(resid, len(x), replace=True))
        try:
            f = fit_law(x, y_star, fit.form, f_scale=f_scale, start=fit.params)
        except VistasError:
            continue
        for name in draws:
            draws[name].append(f.params[name])
    return {name: np.asarray(v) for name, v in draws.items()}


def intervals(draws: dict[str, np.ndarray], level: float = 0.95) -> dict[str, tuple[float, float]]:
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for k, v in draws.items() if len(v)}


def extrapolation_check(x: Sequence[float], y: Sequence[float], form: str = "saturating", *,
                        holdout: float = 0.3, f_scale: float = 0.05) -> dict[str, Any]:
    """Fits ``form`` on the lowest-x points and predicts the highest ``holdout`` fraction."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    n_out = max(1, int(round(holdout * len(x))))
    n_in = len(x) - n_out
    if n_in <= len(FORMS[form]):
        return {"form": form, "skipped": f"{n_in} points left to fit {len(FORMS[form])} parameters"}
    f = fit_law(x[:n_in], y[:n_in], form, f_scale=f_scale)
    pred = f.predict(x[n_in:])
    rel = np.abs(pred - y[n_in:]) / y[n_in:]
    return {"form": form, "fit_on": n_in, "params": f.params, "x_split": float(x[n_in - 1]),
            "held_out": [{"x": float(a), "y": float(b), "predicted": float(p), "rel_error": float(r)}
                         for a, b, p, r in zip(x[n_in:], y[n_in:], pred, rel, strict=True)],
            "mean_rel_error": float(np.mean(rel)), "max_rel_error": float(np.max(rel)),
            "at_bound": list(f.at_bound)}


# --- the results table -----------------------------------------------------------------


def _points(rows: list[dict], x: str, y: str) -> tuple[list[dict], np.ndarray, np.ndarray]:
    if x not in X_COLUMNS:
        raise VistasError(f"--x {x!r} is not known; use one of {', '.join(X_COLUMNS)}")
    xcol = X_COLUMNS[x]
    numeric = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    for col in (xcol, y):
        if not any(col in r for r in rows):
            raise VistasError(f"the results have no column {col!r}; numeric columns: {', '.join(numeric)}")
    done = [r for r in rows if r.get("status", "done") == "done"
            and isinstance(r.get(xcol), (int, float)) and isinstance(r.get(y), (int, float))]
    bad = [r for r in done if not (r[xcol] > 0 and r[y] > 0)]
    if bad:
        r = bad[0]
        raise VistasError(f"run {r.get('member', '?')} has {xcol}={r[xcol]!r}, {y}={r[y]!r}; "
                          "fits are in log space and need positive values")
    if len(done) < 3:
        raise VistasError(f"{len(done)} finished run(s) with {xcol} and {y}; a fit needs at least 3")
    return done, np.array([r[xcol] for r in done], float), np.array([r[y] for r in done], float)


def check_options(*, n_bootstrap: int = 200, extrapolate: float = 0.3) -> None:
    """The fit's options, refused with one line naming the allowed range (checked before
    any results are read): ``n_bootstrap`` resamples (0 skips the bootstrap) and the share
    ``extrapolate`` of the frontier held out for the extrapolation check."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ConfigError(f"--bootstrap {n_bootstrap} must be a whole number >= 0 (0 skips the bootstrap)")
    if not (isinstance(extrapolate, (int, float)) and 0 < extrapolate < 1):  # NaN fails too
        raise ConfigError(f"--extrapolate {extrapolate} must be a fraction in (0, 1): the share of the "
                          "frontier (highest x) held out and predicted, e.g. 0.3")


@dataclasses.dataclass
class Study:
    """A results table fitted by ``fit_study``: the JSON-able report, the finished runs it
    was fitted on and the bootstrap draws of the main law ({name: [n']}); the figures
    (``vistas.scaling.plots.write_figures``) are drawn from these."""

    report: dict[str, Any]
    runs: list[dict]
    draws: dict[str, np.ndarray]


def fit_study(results: Any, *, x: str = "compute", y: str = "eval_error", n_bootstrap: int = 200,
              extrapolate: float = 0.3, seed: int = 0, with_allocation: bool = False) -> Study:
    """Frontier, fits of every form, bootstrap intervals of the saturating law and the
    extrapolation check for a results table (rows, or a path: CSV, JSONL or sweep folder).
    ``with_allocation``: also the compute-optimal allocation (``allocation``) of ``y``, in
    ``report["allocation"]``."""
    from vistas.scaling import results as results_lib

    check_options(n_bootstrap=n_bootstrap, extrapolate=extrapolate)
    n_boot = n_bootstrap
    rows = results_lib.load(results) if not isinstance(results, list) else results
    done, xs, ys = _points(rows, x, y)
    front = pareto_frontier(xs, ys)
    fx, fy = xs[front], ys[front]
    fits, skipped = {}, {}
    for form, names in FORMS.items():
        if len(fx) <= len(names):
            skipped[form] = f"{len(fx)} frontier points for {len(names)} parameters"
            continue
        fits[form] = fit_law(fx, fy, form)
    if not fits:
        raise VistasError(f"the frontier has {len(fx)} point(s); even the pure power law needs 3")
    main = "saturating" if "saturating" in fits else next(iter(fits))
    draws = bootstrap(fx, fy, fits[main], n=n_boot, seed=seed) if n_boot else {}
    checks = {form: extrapolation_check(fx, fy, form, holdout=extrapolate) for form in fits}
    report = {
        "x": x, "x_column": X_COLUMNS[x], "y": y, "runs": len(done),
        "frontier": [{"member": done[i].get("member"), "model": done[i].get("model"),
                      "x": float(xs[i]), "y": float(ys[i])} for i in front],
        "law": main, "params": fits[main].params, "intervals": intervals(draws) if draws else {},
        "bootstrap": {"resamples": n_boot, "fitted": int(len(next(iter(draws.values())))) if draws else 0},
        "forms": {form: {"params": f.params, "rmse_log": f.rmse_log, "formula": f.formula(),
                         "at_bound": list(f.at_bound),
                         "extrapolation": checks[form]} for form, f in fits.items()},
        "skipped_forms": skipped,
    }
    if with_allocation:
        report["allocation"] = allocation(rows, y=y)
    return Study(report, done, draws)


# --- compute-optimal allocation ---------------------------------------------------------


def _loglog(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares of ``log y = slope·log x + intercept``: the slope, its standard error and
    95% interval (Student t), and the r² and rms of the log residuals."""
    from scipy import stats

    lx, ly = np.log(x), np.log(y)
    n = len(lx)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    syy = float(np.sum((ly - ly.mean()) ** 2))
    out = {"slope": float(slope), "coef": float(math.exp(intercept)), "n": n,
           "r2": float(1 - np.sum(resid ** 2) / syy) if syy > 0 else 1.0,
           "rmse_log": float(np.sqrt(np.mean(resid ** 2)))}
    if n > 2:
        se = float(np.sqrt(np.sum(resid ** 2) / (n - 2) / sxx))
        half = float(stats.t.ppf(0.975, n - 2)) * se
        out.update(se=se, interval=(float(slope) - half, float(slope) + half))
    return out


def allocation(results: Any, *, y: str = "eval_error") -> dict[str, Any]:
    """The compute-optimal allocation of a sweep ("ConvNets match vision transformers at
    scale", Smith et al. 2023; Hoffmann et al. 2022, approach 1).

    Of the finished runs, the Pareto frontier of ``y`` against total FLOPs says, for each
    compute budget (a frontier run's FLOPs), which model size (``params``) and how many
    examples seen (``examples_seen``; ``epochs``, and ``lr`` when the table has it) did
    best. Straight lines in log-log space over the frontier give the exponents of
    ``params ∝ C^alpha`` and ``examples ∝ C^beta`` (the paper: alpha ≈ beta ≈ 0.5) and of
    ``y ∝ C^slope`` (is the frontier linear in log-log?).

    A frontier run of the smallest or largest model of the sweep, or of its fewest or most
    examples seen, is at the sweep's *edge*: the optimum at that budget may lie outside the
    grid (a smaller model would have been better still), so its size says little. The
    exponents are fitted on the interior frontier runs when at least 3 of them span at
    least two budgets, else on the whole frontier (``fit_on`` says which).

    When the sweep varies the learning rate (a column ``lr`` with several values), each
    configuration (model size and examples seen) keeps its best ``lr`` (``lr_table``), the
    frontier is taken over those, and ``lr ∝ C^gamma`` is fitted along it too.
    """
    from vistas.scaling import results as results_lib

    rows = results_lib.load(results) if not isinstance(results, list) else results
    done, cs, ys = _points(rows, "compute", y)
    for col in ("params", "examples_seen"):
        have = [r for r in done if isinstance(r.get(col), (int, float))]
        if not have:
            raise VistasError(f"the allocation needs a column {col!r} in the finished runs; "
                              f"these results have none (a vistas sweep's results.csv has it)")
        bad = [r for r in have if not r[col] > 0]
        if bad:
            raise VistasError(f"run {bad[0].get('member', '?')} has {col}={bad[0][col]!r}; "
                              "the allocation is fitted in log space and needs positive values")
    keep = [i for i, r in enumerate(done)
            if isinstance(r.get("params"), (int, float)) and isinstance(r.get("examples_seen"), (int, float))]
    done, cs, ys = [done[i] for i in keep], cs[keep], ys[keep]
    lrs = {float(r["lr"]) for r in done if isinstance(r.get("lr"), (int, float))}
    varies_lr = len(lrs) > 1
    if varies_lr and any(not isinstance(r.get("lr"), (int, float)) or not r["lr"] > 0 for r in done):
        r = next(r for r in done if not isinstance(r.get("lr"), (int, float)) or not r["lr"] > 0)
        raise VistasError(f"run {r.get('member', '?')} has lr={r.get('lr')!r}; when the sweep varies "
                          "the learning rate every finished run needs a positive lr")
    # one run per configuration: the best learning rate of each (model size, examples seen)
    configs: dict[tuple, list[int]] = {}
    for i, r in enumerate(done):
        configs.setdefault((float(r["params"]), float(r["examples_seen"]), float(cs[i]),
                            str(r.get("data_size"))), []).append(i)
    best = {key: min(idx, key=lambda i: ys[i]) for key, idx in configs.items()}
    lr_table = []
    if varies_lr:
        for key in sorted(configs, key=lambda k: (k[0], k[1])):
            idx = configs[key]
            j = best[key]
            lr_table.append({"model": done[j].get("model"), "params": key[0], "examples_seen": key[1],
                             "compute": key[2], "data_size": done[j].get("data_size"),
                             "lrs": sorted(float(done[i]["lr"]) for i in idx), "best_lr": float(done[j]["lr"]),
                             "y": float(ys[j]), "member": done[j].get("member"),
                             "at_edge_of_lrs": float(done[j]["lr"]) in (min(float(done[i]["lr"]) for i in idx),
                                                                       max(float(done[i]["lr"]) for i in idx))
                             and len(idx) > 1})
    chosen = np.array(sorted(best.values()))
    front = chosen[pareto_frontier(cs[chosen], ys[chosen])]
    if len(front) < 3 or len({float(cs[i]) for i in front}) < 2:
        raise VistasError(f"the frontier of {y} vs total_flops has {len(front)} run(s); the allocation "
                          "needs at least 3 at two or more budgets")
    sizes = sorted({float(r["params"]) for r in done})
    seen = sorted({float(r["examples_seen"]) for r in done})
    table = []
    for i in front:
        r = done[i]
        edge = [why for why, hit in (("smallest model", r["params"] == sizes[0]),
                                     ("largest model", r["params"] == sizes[-1]),
                                     ("fewest examples", r["examples_seen"] == seen[0]),
                                     ("most examples", r["examples_seen"] == seen[-1])) if hit]
        table.append({"member": r.get("member"), "model": r.get("model"), "compute": float(cs[i]),
                      "params": float(r["params"]), "examples_seen": float(r["examples_seen"]),
                      "epochs": r.get("epochs"), "data_size": r.get("data_size"),
                      "lr": r.get("lr"), "y": float(ys[i]), "edge": edge})
    interior = [t for t in table if not t["edge"]]
    use = interior if len(interior) >= 3 and len({t["compute"] for t in interior}) >= 2 else table
    c = np.array([t["compute"] for t in use])
    exps = {"alpha": _loglog(c, np.array([t["params"] for t in use])),
            "beta": _loglog(c, np.array([t["examples_seen"] for t in use]))}
    if varies_lr and len({t["lr"] for t in use}) > 1:
        exps["gamma"] = _loglog(c, np.array([float(t["lr"]) for t in use]))
    for t in table:
        t["params_fit"] = exps["alpha"]["coef"] * t["compute"] ** exps["alpha"]["slope"]
        t["examples_fit"] = exps["beta"]["coef"] * t["compute"] ** exps["beta"]["slope"]
    fc = np.array([t["compute"] for t in table])
    return {"y": y, "runs": len(done), "configurations": len(configs), "varies_lr": varies_lr,
            "model_sizes": len(sizes), "fit_on": "interior" if use is interior else "frontier",
            "frontier": table, "exponents": exps,
            "loss_vs_compute": _loglog(fc, np.array([t["y"] for t in table])),
            "lr_table": lr_table}


def format_allocation(alloc: dict[str, Any]) -> str:
    """The allocation table, the fitted exponents and the log-log fit of the frontier."""
    lines = [f"compute-optimal allocation: {len(alloc['frontier'])} frontier runs of {alloc['y']} vs "
             f"total_flops ({alloc['runs']} runs, {alloc['model_sizes']} model sizes)"]
    lr = alloc["varies_lr"]
    head = (f"{'compute':>10} {'member':<22} {'params':>10} {'examples':>10} {'epochs':>7}"
            + (f" {'lr':>8}" if lr else "") + f" {alloc['y']:>10}  {'params fit':>10} {'examples fit':>12}  edge")
    lines.append(head)
    for t in alloc["frontier"]:
        ep = f"{t['epochs']:.3g}" if isinstance(t["epochs"], (int, float)) else "-"
        lines.append(f"{t['compute']:>10.3g} {str(t['member'])[:22]:<22} {t['params']:>10.4g} "
                     f"{t['examples_seen']:>10.4g} {ep:>7}" + (f" {t['lr']:>8.3g}" if lr else "")
                     + f" {t['y']:>10.4f}  {t['params_fit']:>10.4g} {t['examples_fit']:>12.4g}  "
                     + ", ".join(t["edge"]))
    names = {"alpha": "params   ∝ C^alpha", "beta": "examples ∝ C^beta", "gamma": "best lr  ∝ C^gamma"}
    which = ("the interior frontier runs (edge runs left out)" if alloc["fit_on"] == "interior"
             else "every frontier run (too few interior ones: edge runs included)")
    lines.append(f"exponents (log-log least squares on {which}):")
    for k, e in alloc["exponents"].items():
        ci = f"  95% CI [{e['interval'][0]:.3f}, {e['interval'][1]:.3f}]" if "interval" in e else ""
        lines.append(f"  {names[k]}: {k} = {e['slope']:.3f}{ci}  (r² {e['r2']:.3f}, {e['n']} runs)")
    if "alpha" in alloc["exponents"] and "beta" in alloc["exponents"]:
        lines.append(f"  alpha + beta = {alloc['exponents']['alpha']['slope'] + alloc['exponents']['beta']['slope']:.3f}"
                     " (1 when FLOPs per example grow as the parameters)")
    v = alloc["loss_vs_compute"]
    ci = f", 95% CI [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]" if "interval" in v else ""
    lines.append(f"frontier in log-log: {alloc['y']} ∝ C^{v['slope']:.3f}{ci}; r² {v['r2']:.3f}, "
                 f"rms log residual {v['rmse_log']:.4f}")
    if alloc["lr_table"]:
        lines.append("best learning rate per configuration:")
        lines.append(f"  {'model':<14} {'params':>10} {'examples':>10} {'compute':>10} {'best lr':>8}  tried")
        for t in alloc["lr_table"]:
            lines.append(f"  {str(t['model'])[:14]:<14} {t['params']:>10.4g} {t['examples_seen']:>10.4g} "
                         f"{t['compute']:>10.3g} {t['best_lr']:>8.3g}  {', '.join(f'{v:g}' for v in t['lrs'])}"
                         + ("  (at the edge of the lrs tried)" if t["at_edge_of_lrs"] else ""))
    return "\n".join(lines)


def fit_results(results: Any, *, x: str = "compute", y: str = "eval_error", n_bootstrap: int = 200,
                extrapolate: float = 0.3, seed: int = 0, with_allocation: bool = False) -> dict[str, Any]:
    """The JSON-able report of ``fit_study``. Figures: ``vistas.scaling.plots.write_figures``
    on the study (``vistas fit --plot``)."""
    return fit_study(results, x=x, y=y, n_bootstrap=n_bootstrap, extrapolate=extrapolate,
                     seed=seed, with_allocation=with_allocation).report


def format_report(report: dict[str, Any]) -> str:
    """The fitted law with its intervals, the other forms and the extrapolation check."""
    p, ci = report["params"], report["intervals"]
    f = report["forms"][report["law"]]
    lines = [f"{report['runs']} runs, {len(report['frontier'])} on the Pareto frontier of "
             f"{report['y']} vs {report['x_column']}",
             f"{report['law']} law: E = {f['formula']}   (C = {report['x_column']})"]
    boot = report["bootstrap"]
    for k, v in p.items():
        interval = f"  95% CI [{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else ""
        lines.append(f"  {k} = {v:.4g}{interval}")
    if f["at_bound"]:
        lines.append(f"  ({', '.join(f['at_bound'])} reached its bound: the frontier does not determine the law)")
    if ci:
        lines.append(f"  (residual bootstrap: {boot['fitted']} of {boot['resamples']} replicates fitted)")
    lines.append("")
    lines.append(f"{'form':<12} {'rms log resid':>14} {'extrapolation: fit on':>22} {'mean rel err':>13} {'max':>8}")
    for form, r in report["forms"].items():
        e = r["extrapolation"]
        if "skipped" in e:
            lines.append(f"{form:<12} {r['rmse_log']:>14.4f} {'skipped: ' + e['skipped']:>44}")
        else:
            lines.append(f"{form:<12} {r['rmse_log']:>14.4f} {str(e['fit_on']) + ' lowest points':>22} "
                         f"{100 * e['mean_rel_error']:>12.1f}% {100 * e['max_rel_error']:>7.1f}%"
                         + (f"  ({', '.join(e['at_bound'])} at its bound: a step, not a law)"
                            if e.get("at_bound") else ""))
    for form, why in report["skipped_forms"].items():
        lines.append(f"{form:<12} not fitted: {why}")
    if "allocation" in report:
        lines.append("")
        lines.append(format_allocation(report["allocation"]))
    for key in ("plot", "examples_plot", "allocation_plot"):
        if key in report:
            lines.append(f"figure: {report[key]}")
    return "\n".join(lines)


__all__ = ["FORMS", "Fit", "Study", "allocation", "bootstrap", "check_options", "extrapolation_check", "fit_law", "fit_results",
           "fit_study", "format_allocation", "format_report", "intervals", "law", "pareto_frontier"]
