"""The same command twice gives the same bytes: a short rgb (with densification and an opacity
reset) + instance + mapping + query run, repeated while a busy thread competes for the CPU, writes
bit-identical point clouds, language fields and selections."""
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import query
from preprocess.synthetic import generate_scene
from train import main as train_main

TINY = {"n_views": 8, "width": 48, "height": 36, "n_objects": 3, "n_labelled": 2, "n_points": 800}
SHORT = ["--set", "rgb.iterations=80", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
         "--set", "rgb.densify.refine_start_iter=10", "--set", "rgb.densify.refine_every=10",
         "--set", "rgb.densify.refine_stop_iter=60", "--set", "rgb.densify.reset_every=40",
         "--set", "rgb.densify.grow_grad2d=0.0001", "--set", "rgb.sh_degree_interval=20",
         "--set", "instance.iterations=40", "--set", "instance.preview_every=0",
         "--set", "instance.checkpoint_every=0", "--set", "instance.num_samples=4096", "--set", "run.progress=false"]


def full_run(scene, run):
    for stage in ("rgb", "instance", "mapping"):
        assert train_main(["--stage", stage, "-s", str(scene), "-m", str(run), *SHORT]) == 0, stage
    assert query.main(["-m", str(run), "--query", "red apple", "--query", "chair"]) == 0


class BusyThread:
    """Competes for the cores while the run trains (torch matmuls and pure Python)."""

    def __enter__(self):
        self.stop = threading.Event()

        def spin():
            a = torch.randn(256, 256)
            while not self.stop.is_set():
                a = torch.tanh(a @ a.T / 256)
                sum(i * i for i in range(2000))
        self.thread = threading.Thread(target=spin, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.mark.slow
def test_same_command_same_bytes(tmp_path):
    generate_scene(tmp_path / "data", "s", seed=4, preset="default", overrides=TINY, progress=False)
    scene = tmp_path / "data" / "s"
    full_run(scene, tmp_path / "one")
    with BusyThread():
        full_run(scene, tmp_path / "two")
    one, two = tmp_path / "one", tmp_path / "two"
    for f in ("rgb/point_cloud.ply", "instance/point_cloud.ply", "mapping/pairs.pt"):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    assert (one / "mapping" / "language_field.pt").read_bytes() == (two / "mapping" / "language_field.pt").read_bytes()
    for q in ("red apple", "chair"):
        assert np.array_equal(np.load(one / "queries" / f"{q}.npy"), np.load(two / "queries" / f"{q}.npy")), q
    from scene.gaussian_model import load_ply
    assert load_ply(one / "rgb" / "point_cloud.ply")["means"].shape[0] > TINY["n_points"]  # densification ran


def test_torch_files_same_bytes_across_processes(tmp_path):
    """A .pt output written by two processes (two pids, so two temporary names) has the same bytes:
    torch names its zip records after the file it writes to."""
    code = ("import sys, torch; from scene.atomic import torch_save; "
            "torch_save({'pairs': torch.arange(6.0).reshape(2, 3), 'd': 0.5}, sys.argv[1])")
    repo = Path(__file__).resolve().parent.parent
    for name in ("a.pt", "b.pt"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], cwd=repo, check=True, timeout=120)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
