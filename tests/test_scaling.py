"""Scaling studies: frontier, power-law fits and bootstrap, FLOP accounting, sweeps."""

import csv
import json

import numpy as np
import pytest
from conftest import requires_fashion_mnist, smoke

from vistas import cli
from vistas.errors import ConfigError, VistasError
from vistas.scaling import fit, results, spec, sweep
from vistas.systems import flops

# The sweep's later sessions load the steps its first one compiled.
pytestmark = pytest.mark.usefixtures("compilation_cache")

TRUE = {"a": 3.0, "b": 0.4, "c": 0.08, "d": 50.0}


def _synthetic(law_params, seed=1, n=30, noise=0.02):
    x = np.logspace(0, 6, n)
    rng = np.random.default_rng(seed)
    return x, fit.law(x, law_params) * np.exp(rng.normal(0, noise, n))


def test_fit_recovers_the_law_within_bootstrap_intervals():
    x, y = _synthetic(TRUE)
    f = fit.fit_law(x, y)
    ci = fit.intervals(fit.bootstrap(x, y, f, n=100, seed=0))
    for k, v in TRUE.items():
        assert ci[k][0] <= v <= ci[k][1], (k, v, ci[k])
        assert ci[k][1] > ci[k][0]
        assert abs(f.params[k] - v) / v < 0.15, (k, f.params[k])
    assert f.rmse_log < 0.03  # the noise is 2%


def test_simpler_forms_and_extrapolation():
    x, y = _synthetic({"a": 2.0, "b": 0.3}, noise=0.01)
    power = fit.fit_law(x, y, "power")
    assert abs(power.params["b"] - 0.3) < 0.01 and set(power.params) == {"a", "b"}
    no_d = fit.fit_law(x, y, "no_d")
    assert no_d.params["c"] < 0.01  # no saturation in the data, none found
    check = fit.extrapolation_check(x, y, "power", holdout=0.3)
    assert check["fit_on"] == 21 and len(check["held_out"]) == 9
    assert check["mean_rel_error"] < 0.03
    # a saturating curve extrapolated by a pure power law misses, the right form does not
    xs, ys = _synthetic(TRUE, noise=0.005)
    assert (fit.extrapolation_check(xs, ys, "power")["mean_rel_error"]
            > 5 * fit.extrapolation_check(xs, ys, "saturating")["mean_rel_error"])


def test_a_step_is_flagged_not_taken_for_a_law():
    x = np.logspace(0, 2, 8)
    y = np.array([0.5] * 4 + [0.2] * 4) * np.exp(np.random.default_rng(0).normal(0, 0.005, 8))
    assert fit.fit_law(x, y).at_bound == ("b",)
    assert fit.fit_law(*_synthetic(TRUE)).at_bound == ()


def test_fit_rejects_bad_points():
    with pytest.raises(VistasError, match="> 0"):
        fit.fit_law([1, 2, 3, 4, 5, 6], [0.5, 0.4, 0.0, 0.3, 0.2, 0.1])
    with pytest.raises(VistasError, match="needs more points"):
        fit.fit_law([1, 2, 3, 4], [0.5, 0.4, 0.3, 0.2])
    with pytest.raises(VistasError, match="unknown law form 'cubic'"):
        fit.fit_law([1, 2, 3], [3, 2, 1], "cubic")


def test_pareto_frontier_on_hand_made_points():
    #        0    1    2    3    4    5    6    7
    x = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5]
    y = [0.50, 0.45, 0.40, 0.42, 0.30, 0.30, 0.20, 0.90]
    # 1 is beaten by 2 (same x, lower y); 3 by 2; 5 by 4 (same y, less x)
    assert fit.pareto_frontier(x, y).tolist() == [7, 0, 2, 4, 6]
    assert fit.pareto_frontier([3.0, 1.0, 2.0], [0.1, 0.3, 0.2]).tolist() == [1, 2, 0]


def test_vit_flops_cost_analysis_matches_the_analytic_count():
    cfg = smoke("data.batch_size=32", "model.width=128", "model.depth=2", "model.mlp_dim=512",
                "model.num_heads=4")
    vc = flops._vit_config(cfg, 10)
    assert (vc.width, vc.depth, vc.patch, vc.grid) == (128, 2, 7, (4, 4))
    # by hand, 16 tokens: patch embedding, per block QKV+out, scores+values, MLP; head
    block = 4 * 16 * 128 ** 2 + 2 * 16 ** 2 * 128 + 2 * 16 * 128 * 512
    macs = 16 * 49 * 128 + 2 * block + 128 * 10
    assert flops.vit_flops(vc) == 2 * macs
    counted = flops.step_flops(cfg, 10)
    assert counted.source == "cost_analysis"
    assert counted.analytic == 3 * 2 * macs * 32
    # XLA also counts LayerNorm, softmax, GELU and the optimizer: a few percent more
    assert 1.0 <= counted.flops / counted.analytic < 1.04


def _write_spec(path, **changes):
    d = {"name": "tiny", "preset": "smoke",
         "set": ["train.eval_every=1000", "data.eval_splits=['test[:200]']", "schedule.warmup=2",
                 "train.log_every=4"],
         "data_sizes": [256], "budgets": [8, 16], "cooldown": 0.5,
         "models": [{"name": "good", "set": ["model.width=32", "model.depth=1", "model.mlp_dim=64"]},
                    {"name": "bad", "set": ["model.width=33"]}]}  # 33 is not divisible by 2 heads
    d.update(changes)
    lines = []
    for k, v in d.items():
        if k != "models":
            lines.append(f"{k} = {json.dumps(v)}")
    for m in d["models"]:
        lines += ["[[models]]", f"name = {json.dumps(m['name'])}", f"set = {json.dumps(m['set'])}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@requires_fashion_mnist
@pytest.mark.slow
def test_sweep_records_a_crash_skips_finished_members_and_resumes(tmp_path):
    spec_path = _write_spec(tmp_path / "tiny.toml", budgets=[8])
    out = tmp_path / "out"
    rows = {r["member"]: r for r in sweep.run(str(spec_path), out, parallel=2, say=lambda s: None)}
    assert {m: r["status"] for m, r in rows.items()} == {"good/n256/b8": "done", "bad/n256/b8": "failed"}
    assert "not divisible by num_heads" in rows["bad/n256/b8"]["failure"]
    assert "not divisible" in (out / "bad/n256/source/error.txt").read_text()
    # compute accounting of a cooldown branch: 4 steps of its source, then 4 cooldown steps
    r = rows["good/n256/b8"]
    assert (r["branch_step"], r["cooldown_steps"], r["steps"]) == (4, 4, 8)
    assert r["flops_source"] == "cost_analysis" and r["flops_per_step"] > 0
    assert r["total_flops"] == pytest.approx(8 * r["flops_per_step"])
    assert r["examples_seen"] == 8 * 64 and r["params"] > 0 and 0 < r["eval_error"] < 1
    assert r["wall_s"] > 0 and r["device_hours"] == pytest.approx(r["wall_s"] * r["devices"] / 3600)
    assert json.loads((out / "good/n256/b8/config.json").read_text())["train"]["branched_from"].endswith("@4")
    assert [t["status"] for t in csv.DictReader(open(out / "results.csv"))] == ["done", "failed"]
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    status = {s["member"]: s for s in sweep.status(out)}
    assert status["bad/n256/b8"]["status"] == "failed" and "num_heads" in status["bad/n256/b8"]["detail"]

    # run again: the finished source and member are skipped, the failed member retried
    source_acc = (out / "good/n256/source/accounting.json").read_text()
    acc = (out / "good/n256/b8/accounting.json").read_text()
    rows2 = {r["member"]: r for r in sweep.run(str(spec_path), out, in_process=True, say=lambda s: None)}
    assert (out / "good/n256/b8/accounting.json").read_text() == acc
    assert rows2["bad/n256/b8"]["status"] == "failed"
    # an interrupted member (its session ended before the summary was written) resumes
    summary = out / "good/n256/b8/summary.json"
    summary.unlink()
    assert sweep.member_status(out, spec.load(spec_path).members()[0])[0] == "partial"
    rows3 = {r["member"]: r for r in sweep.run(str(spec_path), out, in_process=True,
                                               only="good", say=lambda s: None)}
    assert json.loads(summary.read_text())["finished"]
    assert rows3["good/n256/b8"]["eval_error"] == pytest.approx(r["eval_error"])
    assert json.loads((out / "good/n256/b8/accounting.json").read_text())["sessions"] == 2
    assert (out / "good/n256/source/accounting.json").read_text() == source_acc


def test_sweep_commands_and_slurm_script(tmp_path):
    spec_path = _write_spec(tmp_path / "tiny.toml")
    lines, script = sweep.commands(str(spec_path), tmp_path / "out")
    assert len(lines) == 4 and all(" sweep run " in c and "--only" in c for c in lines)
    assert "--only good/n256/b8" in lines[0]
    assert "#SBATCH --array=0-1" in script and "SWEEP_GROUPS=(good/n256 bad/n256)" in script
    assert (tmp_path / "out/commands.txt").read_text().splitlines() == lines
    # a member's command runs that member only, branched from its group's whole source run
    (group,) = sweep._select(spec.load(spec_path), "good/n256/b8")
    assert [m.id for m in group.members] == ["good/n256/b8"] and group.source_steps == 8
    assert len(sweep._select(spec.load(spec_path), "good")[0].members) == 2
    with pytest.raises(ConfigError, match="--only 'nope' names no group"):
        sweep._select(spec.load(spec_path), "nope")
    with pytest.raises(ConfigError, match="different sweep"):
        sweep.commands(str(_write_spec(tmp_path / "other.toml", budgets=[8])), tmp_path / "out")


@pytest.mark.parametrize("changes, message", [
    ({"budgets": []}, "budgets=.* non-empty list of positive integers"),
    ({"budgets": [8, 8]}, "repeats a value"),
    ({"data_sizes": [0]}, "data_sizes=.*positive integers or \"full\""),
    ({"cooldown": 1.5}, r"cooldown=1.5 must be a fraction in \[0, 1\)"),
    ({"preset": "nope"}, "preset='nope' is not a run preset"),
    ({"set": ["optim.learning_rate=0.1"]}, "did you mean 'optim.lr'"),
    ({"set": ["optim.lr"]}, "not key=value"),
    ({"grid": 3}, "unknown key\\(s\\) 'grid'"),
    ({"budgets": [1]}, "leaves no steps"),
    ({"models": [{"name": "a/b", "set": []}]}, "model name 'a/b'"),
])
def test_malformed_specs_give_clear_errors(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        spec.load(_write_spec(tmp_path / "s.toml", **changes))


def test_unreadable_specs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        spec.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        spec.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown sweep 'fashion_mnist_scalng'.*did you mean"):
        spec.load("fashion_mnist_scalng")
    with pytest.raises(ConfigError, match="missing 'budgets'"):
        spec.from_dict({"name": "x", "preset": "smoke", "models": [{"name": "m"}], "data_sizes": [1]})


def test_the_study_preset_is_a_valid_grid():
    s = spec.load("fashion_mnist_scaling")
    assert len(s.models) >= 4 and len(s.data_sizes) >= 3 and len(s.budgets) >= 3
    groups = s.groups()
    assert len(groups) == len(s.models) * len(s.data_sizes)
    g = groups[0]
    assert g.source_steps == 800 and g.keep_every == 200
    assert [(m.branch_step, m.cooldown_steps) for m in g.members] == [(200, 50), (400, 100), (800, 200)]


def test_the_large_study_preset_reaches_1e14_flops_from_one_source_run_per_model():
    s = spec.load("fashion_mnist_scaling_large")
    groups = s.groups()
    assert len(groups) == len(s.models) == 5 and s.data_sizes == (None,)  # the full set
    g = groups[-1]
    assert g.source_steps == 6400 and g.keep_every == 800
    assert [(m.branch_step, m.cooldown_steps) for m in g.members] == [(800, 200), (2400, 600), (6400, 1600)]


def _results_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _fake_rows():
    rows = []
    for model, params in (("s", 1e4), ("m", 1e5), ("l", 1e6)):
        for budget in (100, 200, 400, 800):
            c = params * budget * 64 * 6
            worse = 1.3 if budget == 800 and model != "l" else 1.0  # overfitted: off the frontier
            rows.append({"member": f"{model}/b{budget}", "model": model, "data_size": "full",
                         "status": "done", "params": params, "total_flops": c,
                         "examples_seen": budget * 64,
                         "eval_error": worse * float(fit.law(c, {"a": 50.0, "b": 0.25, "c": 0.08}))})
    return rows


def test_vistas_fit_prints_the_law_and_writes_the_figures(tmp_path, capsys):
    path = _results_csv(tmp_path / "results.csv", _fake_rows())
    rc = cli.main(["fit", str(path), "--bootstrap", "20", "--plot", str(tmp_path / "fit.png"),
                   "--examples-plot", str(tmp_path / "ex.png")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "saturating law: E = " in text and "95% CI" in text and "extrapolation" in text
    assert (tmp_path / "fit.png").stat().st_size > 10_000 and (tmp_path / "ex.png").exists()
    report = fit.fit_results(str(path), n_bootstrap=0)
    assert report["params"]["c"] == pytest.approx(0.08, rel=0.05)
    frontier = [p["member"] for p in report["frontier"]]
    assert len(frontier) == 10 and "s/b800" not in frontier and "m/b800" not in frontier


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [{**r, "eval_error": "n/a"} for r in rows], "holds 'n/a', not a number"),
    (lambda rows: [{k: v for k, v in r.items() if k != "total_flops"} for r in rows],
     "no column 'total_flops'"),
    (lambda rows: [{**r, "status": "failed"} for r in rows], "0 finished run"),
    (lambda rows: [{**r, "eval_error": 0.0} for r in rows], "need positive values"),
])
def test_malformed_results_give_clear_errors(tmp_path, edit, message):
    path = _results_csv(tmp_path / "results.csv", edit(_fake_rows()))
    with pytest.raises(VistasError, match=message):
        fit.fit_results(str(path), n_bootstrap=0)


def test_unreadable_results(tmp_path):
    (tmp_path / "empty.csv").write_text("member,eval_error\n")
    with pytest.raises(VistasError, match="holds no rows"):
        results.load(tmp_path / "empty.csv")
    (tmp_path / "r.jsonl").write_text('{"member": 1}\nnot json\n')
    with pytest.raises(VistasError, match="r.jsonl:2 is not a JSON object"):
        results.load(tmp_path / "r.jsonl")
    with pytest.raises(VistasError, match="must be .csv or .jsonl"):
        results.load(_results_csv(tmp_path / "r.txt", _fake_rows()))
    with pytest.raises(VistasError, match="not a sweep folder"):
        results.load(tmp_path)


# --- compute-optimal allocation --------------------------------------------------------------


def _chinchilla_rows(a, b, n=25, lrs=None):
    """A grid of model sizes N x examples D with loss E + A/N^a + B/D^b and C = 6ND: the
    compute-optimal N grows as C^(b/(a+b)), D as C^(a/(a+b)) (Hoffmann et al. 2022). With
    ``lrs``, each run is worse by a penalty in log(lr / lr*) with lr* = 0.1 (D/1e6)^-0.25."""
    rows = []
    for i, n_params in enumerate(np.logspace(3, 9, n)):
        for j, seen in enumerate(np.logspace(3, 9, n)):
            loss = 0.5 + 50 * n_params ** -a + 50 * seen ** -b
            for lr in lrs or (None,):
                row = {"member": f"m{i}/b{j}" + (f"/lr{lr}" if lr else ""), "model": f"m{i}",
                       "status": "done", "params": n_params, "examples_seen": seen,
                       "total_flops": 6 * n_params * seen, "eval_loss": loss}
                if lr:
                    row["lr"] = lr
                    row["eval_loss"] = loss * (1 + 0.05 * np.log(lr / (0.1 * (seen / 1e6) ** -0.25)) ** 2)
                rows.append(row)
    return rows


@pytest.mark.parametrize("a, b", [(0.3, 0.3), (0.4, 0.2), (0.2, 0.4)])
def test_allocation_recovers_the_compute_optimal_exponents(a, b):
    alloc = fit.allocation(_chinchilla_rows(a, b), y="eval_loss")
    alpha, beta = alloc["exponents"]["alpha"], alloc["exponents"]["beta"]
    assert alpha["slope"] == pytest.approx(b / (a + b), abs=0.03)
    assert beta["slope"] == pytest.approx(a / (a + b), abs=0.03)
    assert alpha["interval"][0] < alpha["slope"] < alpha["interval"][1]
    assert alloc["fit_on"] == "interior"  # runs at the grid's edges left out
    edges = [t for t in alloc["frontier"] if t["edge"]]
    assert edges and all(t["edge"] for t in alloc["frontier"][:2])  # the smallest runs
    assert "gamma" not in alloc["exponents"] and alloc["lr_table"] == []
    assert alloc["loss_vs_compute"]["slope"] < 0
    text = fit.format_allocation(alloc)
    assert "alpha = " in text and "beta = " in text and "smallest model" in text


def test_allocation_reports_the_best_learning_rate_per_budget():
    lrs = (0.01, 0.03, 0.1, 0.3, 1.0)
    alloc = fit.allocation(_chinchilla_rows(0.3, 0.3, n=13, lrs=lrs), y="eval_loss")
    assert alloc["varies_lr"] and len(alloc["lr_table"]) == 13 * 13
    for t in alloc["lr_table"]:  # the grid's lr closest (in log) to the true optimum
        true = 0.1 * (t["examples_seen"] / 1e6) ** -0.25
        assert t["best_lr"] == min(lrs, key=lambda lr: abs(np.log(lr / true)))
    # lr* ∝ D^-0.25 and D ∝ C^0.5 along the frontier: lr* ∝ C^-0.125 (on a grid of lrs 3x apart)
    assert alloc["exponents"]["gamma"]["slope"] == pytest.approx(-0.125, abs=0.06)
    assert alloc["exponents"]["alpha"]["slope"] == pytest.approx(0.5, abs=0.05)
    assert "best lr" in fit.format_allocation(alloc)


def test_vistas_fit_allocation_cli(tmp_path, capsys):
    path = _results_csv(tmp_path / "results.csv", _fake_rows())
    assert cli.main(["fit", str(path), "--bootstrap", "0", "--allocation",
                     "--allocation-plot", str(tmp_path / "alloc.png")]) == 0
    text = capsys.readouterr().out
    assert "compute-optimal allocation" in text and "alpha = " in text and "frontier in log-log" in text
    assert (tmp_path / "alloc.png").stat().st_size > 10_000
    assert cli.main(["fit", str(path), "--bootstrap", "0", "--allocation", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"alpha", "beta"} <= set(report["allocation"]["exponents"])
    assert "allocation" not in fit.fit_results(str(path), n_bootstrap=0)  # off by default


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "params"} for r in rows],
     "needs a column 'params'"),
    (lambda rows: [{**r, "examples_seen": 0} for r in rows], "examples_seen=0"),
    (lambda rows: [{**r, "lr": 0.1 if i % 2 else -1.0} for i, r in enumerate(rows)], "positive lr"),
    (lambda rows: rows[:2], "2 finished run"),
    (lambda rows: [{**r, "total_flops": 1e9, "eval_error": 0.5} for r in rows], "at two or more budgets"),
])
def test_allocation_rejects_bad_input_in_one_line(edit, message):
    with pytest.raises(VistasError, match=message) as e:
        fit.allocation(edit(_fake_rows()), y="eval_error")
    assert "\n" not in str(e.value)


def test_allocation_plot_needs_the_allocation(tmp_path, capsys):
    path = _results_csv(tmp_path / "results.csv", _fake_rows())
    assert cli.main(["fit", str(path), "--allocation-plot", str(tmp_path / "a.png")]) != 0
    assert "add --allocation" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
