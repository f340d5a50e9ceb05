"""Stage bookkeeping a user can trust: content fingerprints (a copied run stays finished), only
finished predecessors of the same scene, downstream staleness (query-time included), one writer per
run dir, queries that accumulate, and config/query mistakes answered in one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import query
import render
from preprocess.synthetic import generate_scene
from train import main as train_main

REPO = Path(__file__).resolve().parent.parent
TINY = {"n_views": 8, "width": 48, "height": 36, "n_objects": 3, "n_labelled": 2, "n_points": 800}
FAST = ["--set", "rgb.iterations=30", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
        "--set", "rgb.densify.enabled=false", "--set", "instance.iterations=30", "--set", "instance.preview_every=0",
        "--set", "instance.checkpoint_every=0", "--set", "instance.num_samples=2048", "--set", "run.progress=false"]
STAGES = ("rgb", "instance", "mapping")


def train_all(scene, run, *extra):
    return [train_main(["--stage", s, "-s", str(scene), "-m", str(run), *FAST, *extra]) for s in STAGES]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    for name, seed in (("a", 1), ("b", 2)):
        generate_scene(root, name, seed=seed, preset="clean", overrides=TINY, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    r = tmp_path_factory.mktemp("trained") / "run"
    assert train_all(data / "a", r) == [0, 0, 0]
    return r


@pytest.fixture()
def run(trained, tmp_path):
    r = tmp_path / "run"
    shutil.copytree(trained, r)  # a private copy of the trained run for each test
    return r


def mtimes(run):
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


def test_copied_run_dir_stays_finished(data, run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, copy_function=shutil.copy)  # like `cp -r`: new mtimes, same content
    capsys.readouterr()
    assert train_all(data / "a", copy) == [0, 0, 0]
    out = capsys.readouterr().out
    assert out.count("already finished") == 3, out
    assert query.main(["-m", str(copy), "--query", "x"]) == 0


def test_touched_input_is_not_a_change_but_new_content_is(data, tmp_path, capsys):
    scene = tmp_path / "a"
    shutil.copytree(data / "a", scene)
    r = tmp_path / "r"
    assert train_all(scene, r) == [0, 0, 0]
    s = sorted((scene / "language_features").glob("*_s.npy"))[0]
    os.utime(s, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime
    capsys.readouterr()
    assert train_main(["--stage", "instance", "-s", str(scene), "-m", str(r), *FAST]) == 0
    assert "already finished" in capsys.readouterr().out
    seg = np.load(s)
    seg[3] = np.where(seg[3] >= 0, seg[3][::-1], seg[3])  # new content (ids stay valid)
    np.save(s, seg)
    assert train_main(["--stage", "instance", "-s", str(scene), "-m", str(r), *FAST]) == 0
    out = capsys.readouterr().out
    assert "inputs changed" in out and s.name in out and "done:" in out


def test_retrained_instance_makes_mapping_and_queries_stale(data, run, capsys):
    assert query.main(["-m", str(run), "--query", "a", "--query", "b"]) == 0
    assert train_main(["--stage", "instance", "-m", str(run), *FAST, "--set", "run.seed=5", "--force"]) == 0
    capsys.readouterr()
    assert query.main(["-m", str(run), "--query", "a"]) == 2
    one_line_error(capsys, "mapping", "stale", "--stage mapping")
    assert train_main(["--stage", "mapping", "-m", str(run), *FAST, "--set", "run.seed=5"]) == 0
    out = capsys.readouterr().out
    assert "inputs changed" in out  # the mapping saw the new instance field and started over
    assert query.main(["-m", str(run), "--query", "a"]) == 0
    assert "earlier queries are dropped" in capsys.readouterr().out
    index = json.loads((run / "queries" / "index.json").read_text())
    assert list(index["queries"]) == ["a"]  # "b" belonged to the old model


def test_retrained_rgb_makes_everything_after_it_stale(data, run, capsys):
    assert train_main(["--stage", "rgb", "-m", str(run), *FAST, "--set", "run.seed=7", "--force"]) == 0
    capsys.readouterr()
    assert query.main(["-m", str(run), "--query", "a"]) == 2
    one_line_error(capsys, "instance", "stale")


def test_other_scene_is_refused_before_anything_is_deleted(data, run, capsys):
    before = mtimes(run)
    for stage in STAGES:
        assert train_main(["--stage", stage, "-s", str(data / "b"), "-m", str(run), *FAST]) == 2, stage
        one_line_error(capsys, "another scene")
    assert mtimes(run) == before or {p for p in before if p.name not in ("config.yaml",)} <= set(mtimes(run))
    assert all((run / s / "done.json").is_file() for s in STAGES)
    assert (run / "rgb" / "point_cloud.ply").stat().st_mtime_ns == before[run / "rgb" / "point_cloud.ply"]


def test_unfinished_predecessor_is_refused(data, run, capsys):
    (run / "rgb" / "done.json").unlink()
    assert train_main(["--stage", "instance", "-m", str(run), *FAST, "--force"]) == 2
    one_line_error(capsys, "'rgb' stage did not finish", "--stage rgb")
    assert (run / "instance" / "done.json").is_file()  # nothing of the later stage was removed


def test_replaced_output_is_detected(data, run, capsys):
    ply = run / "rgb" / "point_cloud.ply"
    ply.write_bytes(ply.read_bytes()[:-8] + b"\0" * 8)
    assert train_main(["--stage", "instance", "-m", str(run), *FAST]) == 2
    one_line_error(capsys, "point_cloud.ply changed after the 'rgb' stage finished", "--force")


def test_second_writer_is_refused_and_a_dead_holder_taken_over(data, run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from scene.rundir import RunLock; "
         "lock = RunLock(sys.argv[1], 'test holder').acquire(); print('locked', flush=True); time.sleep(60)", str(run)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train_main(["--stage", "mapping", "-m", str(run), *FAST]) == 2
        one_line_error(capsys, f"pid {holder.pid}", "in use")
        assert query.main(["-m", str(run), "--query", "a"]) == 2
        one_line_error(capsys, f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert train_main(["--stage", "mapping", "-m", str(run), *FAST]) == 0  # the killed holder's lock is free


def test_queries_accumulate_and_any_text_is_a_safe_file(data, run, capsys):
    weird = ["chair/table", "x" * 5000, "🍎 apple", ".hidden box", "a"]
    assert query.main(["-m", str(run), "--query", "a", "--query", "b"]) == 0
    assert query.main(["-m", str(run), *sum((["--query", q] for q in weird), [])]) == 0
    index = json.loads((run / "queries" / "index.json").read_text())
    assert sorted(index["queries"]) == sorted(set(["a", "b", *weird]))
    assert {v["text_encoder"]["encoder"] for v in index["queries"].values()} == {"hash"}  # auto: synthetic.json
    assert "text_encoder" in (run / "queries" / "config.yaml").read_text()
    files = {v["file"] for v in index["queries"].values()}
    assert len(files) == len(index["queries"])  # distinct names
    for f in files:
        assert "/" not in f and len(f.encode()) < 200 and (run / "queries" / f).is_file()
    assert render.main(["-m", str(run), "--set", "query.queries=[]"]) == 0
    frame = next((run / "renders").iterdir())
    assert len(list(frame.glob("*.png"))) == len(index["queries"])  # every query so far, not only the last call
    capsys.readouterr()
    assert query.main(["-m", str(run), "--query", ""]) == 2
    one_line_error(capsys, "empty query")
    assert query.main(["-m", str(run), "--query", "  "]) == 2
    one_line_error(capsys, "empty query")


@pytest.mark.parametrize("args, needles", [
    (["--set", "rgb.iterations=0"], ["rgb.iterations", ">= 1", "0"]),
    (["--set", "instance.iterations=-5"], ["instance.iterations", ">= 1"]),
    (["--set", "run.device=tpu"], ["run.device='tpu'", "auto | cpu"]),
    (["--set", "rgb.iterations=many"], ["rgb.iterations", "integer"]),
    (["--set", "rgb.iteratons=10"], ["unknown key 'iteratons'"]),
    (["--set", "rbg.iterations=10"], ["unknown section 'rbg'"]),
    (["-c", "no/such/file.yaml"], ["no/such/file.yaml", "not found"]),
    (["--set", "mapping.sam_level=2"], ["instance.sam_level=3", "mapping.sam_level=2"]),
    (["--set", "query.mode=magic"], ["query.mode", "collaborative"]),
])
def test_config_mistakes_are_one_line(data, tmp_path, capsys, args, needles):
    stage = "mapping" if "sam_level" in " ".join(args) else "rgb"
    r = tmp_path / "r"
    assert train_main(["--stage", stage, "-s", str(data / "a"), "-m", str(r), *FAST, *args]) == 2
    one_line_error(capsys, *needles)
    assert not (r / "rgb" / "done.json").exists()


def test_graphdeco_flags(data, tmp_path):
    r = tmp_path / "r"
    assert train_main(["--stage", "rgb", "-s", str(data / "a"), "-m", str(r), *FAST, "-r", "2", "-w", "--eval",
                       "--set", "rgb.holdout_offset=-1"]) == 0
    cfg = (r / "rgb" / "config.yaml").read_text()
    assert "resolution: 2" in cfg and "white_background: true" in cfg and "holdout_offset: 0" in cfg
    ev = json.loads((r / "rgb" / "done.json").read_text())
    assert ev["test"]["n_views"] == 1  # 8 views, every 8th held out
