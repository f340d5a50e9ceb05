"""sweep.py: the grid's planning (commands of a cell), the results table, the driver (chaining, a failed
cell that does not stop the others, finished cells skipped on a re-run) on every engine with stub
commands, and a real 2 scenes x 2 argument files grid on a local Ray cluster."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sweep
from stages import grid

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "readme_tiny.yaml"


def _csv(path):
    with open(path, newline="") as fh:
        return {(r["ablation"], r["scene"]): r for r in csv.DictReader(fh)}


# --- planning ------------------------------------------------------------------------------------

def test_dry_run_prints_each_command_of_a_cell(tmp_path, capsys):
    (tmp_path / "data" / "s0").mkdir(parents=True)
    common, abl = tmp_path / "common.yaml", tmp_path / "abl.yaml"
    common.write_text("rgb: {iterations: 5}\n")
    abl.write_text("query: {mode: language_only}\n")
    data, out, labels = tmp_path / "data", tmp_path / "out", tmp_path / "labels"
    rc = sweep.main(["--scenes", "s0", "--argfiles", str(abl), "base", "--seeds", "3", "--data_root", str(data),
                     "--label_root", str(labels), "--out_root", str(out), "-c", str(common),
                     "--set", "mapping.mlp_epochs=1", "--cpus-per-job", "2", "--engine", "serial", "--dry-run"])
    text = capsys.readouterr().out
    assert rc == 0
    run = out / "abl" / "seed3" / "s0"
    tail = f"-c {common} -c {abl} --set run.seed=3 --set mapping.mlp_epochs=1"
    for stage in ("rgb", "instance", "mapping"):
        assert f"python train.py --stage {stage} -s {data / 's0'} -m {run} {tail} --set run.num_threads=2\n" in text
    # the eval job: 1 CPU, the label root given to query/render, eval_lerf scoring into <run>/eval
    cpu = "--set run.num_threads=1 --set run.device=cpu"
    assert f"python query.py -m {run} {tail} {cpu} --set eval.label_root={labels}\n" in text
    assert f"python render.py -m {run} {tail} {cpu} --set eval.label_root={labels}\n" in text
    assert (f"python eval_lerf.py --scenes s0 --label_root {labels} --runs_root {out / 'abl' / 'seed3'} "
            f"--out {run / 'eval'} {tail} {cpu}\n") in text
    # "base": the plain config, no ablation file
    base = out / "base" / "seed3" / "s0"
    assert (f"python train.py --stage rgb -s {data / 's0'} -m {base} -c {common} --set run.seed=3 "
            f"--set mapping.mlp_epochs=1 --set run.num_threads=2\n") in text
    assert text.count("to run") == 2 and not out.exists()  # nothing written


def test_default_scene_gets_the_cpu_schedules_first(tmp_path):
    cells = grid.plan(None, [str(TINY)], [0], grid.SYNTH_ROOT, None, tmp_path)
    assert [c.scene for c in cells] == ["default"]
    assert cells[0].configs == [grid.CPU_ARGFILE, TINY]
    assert cells[0].label_root == grid.SYNTH_ROOT / "label"
    assert bool(cells[0].generate) != (grid.SYNTH_ROOT / "default").is_dir()


@pytest.mark.parametrize("args, message", [
    (["--scenes", "nope"], "scene folder not found"),
    (["--scenes", "s0", "--argfiles", "missing.yaml"], "argument file not found: 'missing.yaml'"),
    (["--scenes", "s0", "--argfiles", str(TINY), str(TINY)], "argument files share a name"),
    (["--scenes", "s0", "--cpus-per-job", "0"], "must be >= 1"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "s0").mkdir()
    assert sweep.main(args + ["--data_root", str(tmp_path), "--out_root", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_engine_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.build_parser().parse_args(["--engine", "dask"])
    assert e.value.code == 2 and "invalid choice: 'dask'" in capsys.readouterr().err


# --- the results table ---------------------------------------------------------------------------

def test_table_mean_and_std_over_seeds(tmp_path):
    def cell(abl, scene, seed, miou, macc):
        grid.write_json(tmp_path / abl / f"seed{seed}" / scene / "cell.json",
                        {"ablation": abl, "scene": scene, "seed": seed, "metrics": {"mIoU": miou, "mAcc@0.25": macc}})
    cell("A", "s0", 0, 10.0, 30.0)
    cell("A", "s0", 1, 20.0, 50.0)
    cell("A", "s1", 0, 40.0, 70.0)
    cell("A", "s1", 1, 60.0, 90.0)
    cell("B", "s0", 0, 5.0, 6.0)    # B never finished s1: no mean over scenes
    (tmp_path / "B" / "seed0" / "s1").mkdir(parents=True)  # a run without cell.json does not count
    text = grid.write_table(tmp_path)
    rows = _csv(tmp_path / "grid_metrics.csv")
    assert list(rows) == [("A", "s0"), ("A", "s1"), ("A", "mean"), ("B", "s0"), ("B", "mean")]

    def vals(key):
        r = rows[key]
        return [r["mIoU_mean"], r["mIoU_std"], r["mAcc@0.25_mean"], r["mAcc@0.25_std"], r["n_seeds"]]
    # sample std (ddof 1, as the other tables of the project): {10, 20} -> 15 +- 7.0711; {30, 50} -> 40 +- 14.1421
    assert vals(("A", "s0")) == ["15.0000", "7.0711", "40.0000", "14.1421", "2"]
    assert vals(("A", "s1")) == ["50.0000", "14.1421", "80.0000", "14.1421", "2"]
    # mean over scenes per seed: mIoU seed 0 (10 + 40) / 2 = 25, seed 1 (20 + 60) / 2 = 40 -> 32.5 +- 10.6066;
    # mAcc seed 0 50, seed 1 70 -> 60 +- 14.1421
    assert vals(("A", "mean")) == ["32.5000", "10.6066", "60.0000", "14.1421", "2"]
    assert vals(("B", "s0")) == ["5.0000", "0.0000", "6.0000", "0.0000", "1"]
    assert vals(("B", "mean")) == ["", "", "", "", "0"]
    assert json.loads((tmp_path / "grid_metrics.json").read_text())[2]["mIoU_mean"] == 32.5
    assert "32.50 ± 10.61" in text


# --- the driver on every engine, with stub commands ----------------------------------------------

@pytest.mark.parametrize("engine", ["serial", "ray", "submitit"])
def test_driver_chains_reports_failures_and_skips_finished_cells(tmp_path, monkeypatch, capsys, engine):
    if engine != "serial":
        pytest.importorskip(engine)
    for s in ("s0", "s1"):
        (tmp_path / "data" / s).mkdir(parents=True)
    a1, a2 = tmp_path / "a1.yaml", tmp_path / "a2.yaml"
    a1.write_text("rgb: {iterations: 5}\n")
    a2.write_text("rgb: {iterations: 6}\n")
    broken = {("s1", "a2")}

    def stub(cell, kind, threads):
        py = sys.executable
        if kind == "train":
            code = "import os, sys; print('threads', os.environ['OMP_NUM_THREADS']); "
            code += "print('boom'); sys.exit(3)" if (cell.scene, cell.ablation) in broken else "print('trained')"
            return [[py, "-c", code], [py, "-c", "print('second')"]]
        metrics = {"scenes": {cell.scene: {"mIoU": 10.0 + cell.seed, "Acc@0.25": 20.0}}}
        code = (f"import json, pathlib; p = pathlib.Path({str(cell.run_dir / 'eval')!r}); "
                f"p.mkdir(parents=True, exist_ok=True); (p / 'metrics.json').write_text({json.dumps(metrics)!r})")
        return [[py, "-c", code]]

    monkeypatch.setattr(grid, "job_commands", stub)
    out = tmp_path / "out"
    argv = ["--scenes", "s0", "s1", "--argfiles", str(a1), str(a2), "--data_root", str(tmp_path / "data"),
            "--out_root", str(out), "--engine", engine, "--cpus", "2", "--submitit-local"]
    assert sweep.main(argv) == 1
    text = capsys.readouterr().out
    log = out / "a2" / "seed0" / "s1" / "logs" / "train.log"
    assert f"FAILED scene s1, argfile {a2}, seed 0: train job" in text and f"log: {log}" in text
    assert "exit status 3" in text and "boom" in text
    assert "second" not in log.read_text()  # the failing command stopped its job
    assert "threads 1" in log.read_text()
    assert not (out / "a2" / "seed0" / "s1" / "eval").exists()  # nor its eval job
    finished = [out / a / "seed0" / s / "cell.json" for a, s in (("a1", "s0"), ("a1", "s1"), ("a2", "s0"))]
    assert all(p.is_file() for p in finished)
    assert "1 failed" in text and "3 ran" in text
    assert set(_csv(out / "grid_metrics.csv")) == {("a1", "s0"), ("a1", "s1"), ("a1", "mean"), ("a2", "s0"),
                                                   ("a2", "mean")}
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished}

    broken.clear()
    assert sweep.main(argv) == 0
    text = capsys.readouterr().out
    assert text.count(": skipped (finished)") == 3 and "1 ran, 3 skipped (finished), 0 failed" in text
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished} == before
    assert _csv(out / "grid_metrics.csv")[("a2", "mean")]["n_seeds"] == "1"

    if engine != "serial":
        return  # the rest is the planning's, the same on every engine
    a1.write_text("rgb: {iterations: 7}\n")  # a changed argument file: its cells run again
    assert sweep.main(argv) == 0
    assert "2 ran, 2 skipped" in capsys.readouterr().out


# --- the real thing: 2 tiny scenes x 2 argument files on a local Ray cluster ------------------------

@pytest.mark.slow
def test_ray_grid_end_to_end(tmp_path):
    pytest.importorskip("ray")
    data, out = tmp_path / "data", tmp_path / "out"
    for seed, s in enumerate(("s0", "s1")):
        subprocess.run([sys.executable, "-m", "preprocess.synthetic", "--root", str(data), "--scene", s, "--seed",
                        str(seed), "--views", "8", "--width", "64", "--height", "48", "--objects", "3", "--quiet"],
                       cwd=REPO, check=True)
    tiny = yaml.safe_load(TINY.read_text())
    a1, a2 = tmp_path / "tiny.yaml", tmp_path / "alt.yaml"
    a1.write_text(yaml.safe_dump(tiny))
    tiny["instance"]["features_folder"] = "language_features_alt"  # only s0 has it: cell (s1, alt) fails
    a2.write_text(yaml.safe_dump(tiny))
    shutil.copytree(data / "s0" / "language_features", data / "s0" / "language_features_alt")
    cmd = [sys.executable, "sweep.py", "--scenes", "s0", "s1", "--argfiles", str(a1), str(a2), "--seeds", "0",
           "--data_root", str(data), "--out_root", str(out), "--engine", "ray", "--cpus", "2"]

    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stdout + r.stderr
    log = out / "alt" / "seed0" / "s1" / "logs" / "train.log"
    assert f"FAILED scene s1, argfile {a2}, seed 0: train job" in r.stdout and f"log: {log}" in r.stdout
    assert "--stage instance" in r.stdout and "language_features_alt" in log.read_text()
    finished = [out / a / "seed0" / s / "cell.json" for a, s in (("tiny", "s0"), ("tiny", "s1"), ("alt", "s0"))]
    for p in finished:
        cell = json.loads(p.read_text())
        assert set(cell["metrics"]) == {"mIoU", "mAcc@0.25"} and (p.parent / "eval" / "metrics.json").is_file()
    rows = _csv(out / "grid_metrics.csv")
    assert {("tiny", "s0"), ("tiny", "s1"), ("alt", "s0")} <= set(rows) and ("alt", "s1") not in rows
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished}

    shutil.copytree(data / "s1" / "language_features", data / "s1" / "language_features_alt")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": skipped (finished)") == 3 and "1 ran, 3 skipped (finished), 0 failed" in r.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished} == before
    rows = _csv(out / "grid_metrics.csv")
    assert {(a, s) for a in ("tiny", "alt") for s in ("s0", "s1", "mean")} == set(rows)
    assert rows[("alt", "mean")]["n_seeds"] == "1"
