"""How often the 95% bootstrap intervals of `vistas fit` contain the true parameters.

Draws noisy points from a known saturating law E = a(C + d)^-b + c (30 points over six
decades, 2% log-normal noise), fits it, bootstraps it, and counts the seeds whose
interval contains each true parameter. Prints the coverage and the fit's time.

    python benchmarks/scaling_fit_coverage.py [--seeds 40] [--resamples 200]
"""

import argparse
import time

import numpy as np

from vistas.scaling import fit

TRUE = {"a": 3.0, "b": 0.4, "c": 0.08, "d": 50.0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--points", type=int, default=30)
    p.add_argument("--noise", type=float, default=0.02)
    args = p.parse_args()
    x = np.logspace(0, 6, args.points)
    inside = {k: 0 for k in TRUE}
    errors = {k: [] for k in TRUE}
    tick = time.perf_counter()
    for seed in range(args.seeds):
        y = fit.law(x, TRUE) * np.exp(np.random.default_rng(seed).normal(0, args.noise, len(x)))
        f = fit.fit_law(x, y)
        ci = fit.intervals(fit.bootstrap(x, y, f, n=args.resamples, seed=seed))
        for k, v in TRUE.items():
            inside[k] += ci[k][0] <= v <= ci[k][1]
            errors[k].append(abs(f.params[k] - v) / v)
    seconds = (time.perf_counter() - tick) / args.seeds
    print(f"{args.seeds} seeds, {args.points} points, {100 * args.noise:.0f}% noise, "
          f"{args.resamples} bootstrap replicates; {seconds:.1f} s per fit + bootstrap")
    print(f"{'param':<6} {'true':>8} {'coverage of 95% CI':>20} {'median |rel. error|':>20}")
    for k, v in TRUE.items():
        print(f"{k:<6} {v:>8g} {100 * inside[k] / args.seeds:>19.0f}% {100 * np.median(errors[k]):>19.1f}%")


if __name__ == "__main__":
    main()
