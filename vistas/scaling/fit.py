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
              extrapolate: float = 0.3, seed: int = 0) -> Study:
    """Frontier, fits of every form, bootstrap intervals of the saturating law and the
    extrapolation check for a results table (rows, or a path: CSV, JSONL or sweep folder)."""
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
    return Study(report, done, draws)


def fit_results(results: Any, *, x: str = "compute", y: str = "eval_error", n_bootstrap: int = 200,
                extrapolate: float = 0.3, seed: int = 0) -> dict[str, Any]:
    """The JSON-able report of ``fit_study``. Figures: ``vistas.scaling.plots.write_figures``
    on the study (``vistas fit --plot``)."""
    return fit_study(results, x=x, y=y, n_bootstrap=n_bootstrap, extrapolate=extrapolate,
                     seed=seed).report


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
    for key in ("plot", "examples_plot"):
        if key in report:
            lines.append(f"figure: {report[key]}")
    return "\n".join(lines)


__all__ = ["FORMS", "Fit", "Study", "bootstrap", "check_options", "extrapolation_check", "fit_law", "fit_results",
           "fit_study", "format_report", "intervals", "law", "pareto_frontier"]
