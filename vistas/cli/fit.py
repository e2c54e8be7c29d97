"""``vistas fit``: fit the saturating power law on the Pareto frontier of a sweep's results,
report its compute-optimal allocation (``--allocation``), and draw its figures."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from vistas.errors import VistasError
    from vistas.scaling import fit, results

    fit.check_options(n_bootstrap=args.bootstrap, extrapolate=args.extrapolate)
    if args.allocation_plot and not args.allocation:
        raise VistasError("--allocation-plot draws the allocation: add --allocation")
    rows = results.load(args.results)
    if args.plot or args.examples_plot:
        from vistas.scaling import plots

        plots.check_columns(rows, args.results, plot=args.plot, examples_plot=args.examples_plot)
    study = fit.fit_study(rows, x=args.x, y=args.y, n_bootstrap=args.bootstrap,
                          extrapolate=args.extrapolate, seed=args.seed,
                          with_allocation=args.allocation)
    if args.plot or args.examples_plot or args.allocation_plot:
        from vistas.scaling import plots

        plots.write_figures(study, plot=args.plot, examples_plot=args.examples_plot,
                            allocation_plot=args.allocation_plot)
    report = study.report
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(fit.format_report(report))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fi = sub.add_parser("fit", help="fit E = a(C + d)^-b + c on the Pareto frontier of a sweep")
    fi.add_argument("results", help="results.csv / results.jsonl of a sweep, or its folder")
    fi.add_argument("--x", default="compute", choices=["compute", "examples", "params"],
                    help="total training FLOPs, examples seen or parameters (default compute)")
    fi.add_argument("--y", default="eval_error", help="a results column (default eval_error)")
    fi.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples, 0 for none (default 200)")
    fi.add_argument("--extrapolate", type=float, default=0.3,
                    help="fraction of the frontier (highest x) held out and predicted, in (0, 1) "
                    "(default 0.3)")
    fi.add_argument("--plot", help="write the figure here (PNG)")
    fi.add_argument("--examples-plot", help="also plot error vs examples seen per model size here")
    fi.add_argument("--allocation", action="store_true",
                    help="also the compute-optimal allocation of --y: for each budget on the "
                    "frontier the model size and examples seen (and lr), and the exponents of "
                    "params ∝ C^alpha, examples ∝ C^beta")
    fi.add_argument("--allocation-plot", help="with --allocation: draw it here (PNG)")
    fi.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    fi.add_argument("--json", action="store_true")
    fi.set_defaults(fn=run)
