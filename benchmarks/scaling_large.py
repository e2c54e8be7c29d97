"""The Fashion-MNIST scaling study up to ~1e14 FLOPs: does the saturating law extrapolate?

    python benchmarks/scaling_large.py [--out runs/scaling_large] [--plot docs/scaling_large.png] \
        [--parallel 1] [--tolerance 0.1]

Runs the sweep preset ``fashion_mnist_scaling_large`` (5 ViT sizes x 1,000 / 3,000 / 8,000
steps on the full training set, each budget a cooldown branch of one rsqrt run per model;
finished members are skipped, so rerunning the command resumes it), then fits the
frontier of test error against total FLOPs (``vistas fit``: every form, bootstrap
intervals, the extrapolation check on the upper 30% of the frontier) and prints the
verdict: the saturating law *extrapolates* when, fitted on the lower 70% of the frontier,
it predicts every held-out frontier point within ``--tolerance`` (relative error of the
test error) and its parameters stay off their bounds.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from vistas.scaling import fit, sweep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/scaling_large")
    p.add_argument("--plot", help="PNG of the fit")
    p.add_argument("--examples-plot", help="PNG of error against examples seen per model")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=0.1)
    args = p.parse_args()
    start = time.perf_counter()
    sweep.run("fashion_mnist_scaling_large", args.out, parallel=args.parallel)
    minutes = (time.perf_counter() - start) / 60
    results = pathlib.Path(args.out) / "results.csv"
    study = fit.fit_study(str(results), n_bootstrap=200, with_allocation=True)
    if args.plot or args.examples_plot:
        from vistas.scaling import plots

        plots.write_figures(study, plot=args.plot, examples_plot=args.examples_plot)
    report = study.report
    print(fit.format_report(report))
    print()
    if "saturating" not in report["forms"]:
        print(f"verdict: not tested (the saturating law was not fitted: {report['skipped_forms']})")
        return 0
    check = report["forms"]["saturating"]["extrapolation"]
    if "skipped" in check:
        print(f"verdict: not tested ({check['skipped']}); {minutes:.1f} min")
        return 0
    for h in check["held_out"]:
        print(f"  held out: {h['x']:.3g} FLOPs  error {h['y']:.4f}  predicted {h['predicted']:.4f}  "
              f"({100 * h['rel_error']:.1f}% off)")
    holds = check["max_rel_error"] <= args.tolerance and not any(check["at_bound"])
    print(f"verdict: the saturating law {'extrapolates' if holds else 'does not extrapolate'} "
          f"(fitted on the {check['fit_on']} lowest frontier points up to {check['x_split']:.3g} FLOPs, "
          f"max relative error {100 * check['max_rel_error']:.1f}% against a tolerance of "
          f"{100 * args.tolerance:.0f}%{', parameters at their bounds' if any(check['at_bound']) else ''}); "
          f"{minutes:.1f} min for the members not reused")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
