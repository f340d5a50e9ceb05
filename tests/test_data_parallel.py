"""Data-parallel training (scene/distributed.py): two CPU ranks under torchrun (gloo) train the same
Gaussians as one process that renders the same cameras per step (rgb.batch_views = 2), densification,
the opacity reset and the SH warm-up included; the instance field likewise; a run interrupted in one
process resumes under two ranks and ends where the uninterrupted run ends."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scene.gaussian_model import load_ply
from train import main as train_main

REPO = Path(__file__).resolve().parent.parent
TINY = {"n_views": 8, "width": 48, "height": 36, "n_objects": 3, "n_labelled": 2, "n_points": 400,
        "layout_radius": 0.3, "distance": 1.0}
# densify from step 2 every 3 steps with a low threshold (Gaussians are cloned and split), an opacity
# reset at step 6, SH degree 1 from step 4, a random background per step
RGB = ["--set", "rgb.iterations=12", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
       "--set", "rgb.densify.refine_start_iter=2", "--set", "rgb.densify.refine_every=3",
       "--set", "rgb.densify.refine_stop_iter=10", "--set", "rgb.densify.reset_every=6",
       "--set", "rgb.densify.grow_grad2d=0.00005", "--set", "rgb.sh_degree_interval=4",
       "--set", "rgb.random_background=true"]
INSTANCE = ["--set", "instance.iterations=8", "--set", "instance.num_samples=2048",
            "--set", "instance.preview_every=0", "--set", "instance.checkpoint_every=0"]
COMMON = ["--set", "run.progress=false", "--set", "run.num_threads=1"]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    from preprocess.synthetic import generate_scene

    root = tmp_path_factory.mktemp("dp")
    generate_scene(root / "data", "tiny", seed=3, preset="clean", overrides=TINY, progress=False)
    return root / "data" / "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc train.py args`` on 127.0.0.1 only, bounded in time."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(REPO / "train.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _ply(run: Path, stage: str) -> dict:
    return load_ply(run / stage / "point_cloud.ply")


def _assert_same(a: dict, b: dict, atol=2e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        err = (a[k] - b[k]).abs().max().item()
        assert err <= atol, (k, err)


@pytest.fixture(scope="module")
def single_and_ranks(scene_dir, tmp_path_factory):
    """The same schedule in one process (2 views per step) and on two gloo ranks (one view each)."""
    root = tmp_path_factory.mktemp("runs")
    one, two = root / "one", root / "two"
    for stage, extra in (("rgb", RGB), ("instance", INSTANCE)):
        assert train_main(["--stage", stage, "-s", str(scene_dir), "-m", str(one), *extra, *COMMON,
                           "--set", f"{stage}.batch_views=2"]) == 0
        p = torchrun(["--stage", stage, "-s", str(scene_dir), "-m", str(two), *extra, *COMMON])
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return one, two, p


def test_two_ranks_train_the_gaussians_of_one_process(single_and_ranks):
    one, two, _ = single_and_ranks
    a, b = _ply(one, "rgb"), _ply(two, "rgb")
    _assert_same(a, b)
    done = json.loads((two / "rgb" / "done.json").read_text())
    assert done["views_per_step"] == 2 and done["ranks"] == 2
    assert a["means"].shape[0] != TINY["n_points"], "densification did not change the model: the test is vacuous"


def test_two_ranks_train_the_instance_field_of_one_process(single_and_ranks):
    one, two, _ = single_and_ranks
    fa, fb = _ply(one, "instance")["ins_feat"], _ply(two, "instance")["ins_feat"]
    assert fa.shape == fb.shape
    assert (fa - fb).abs().max().item() <= 2e-5


def test_the_comparison_can_fail(single_and_ranks, scene_dir, tmp_path):
    """One view per step in one process sees other cameras: its model is measurably different."""
    one, _, _ = single_and_ranks
    ref = tmp_path / "b1"
    assert train_main(["--stage", "rgb", "-s", str(scene_dir), "-m", str(ref), *RGB, *COMMON]) == 0
    a, c = _ply(one, "rgb"), _ply(ref, "rgb")
    same_n = a["means"].shape == c["means"].shape
    assert not same_n or (a["means"] - c["means"]).abs().max().item() > 1e-3


def test_rank_zero_alone_writes_and_logs(single_and_ranks):
    one, two, p = single_and_ranks
    assert p.stdout.count("[instance] done:") == 1, p.stdout
    assert "2 ranks (gloo)" in p.stdout


def test_interrupted_run_resumes_on_two_ranks(scene_dir, tmp_path, monkeypatch):
    """Interrupted at step 9 of 12 in one process (checkpoint at 8), resumed under torchrun: the final
    model is the uninterrupted one-process run's (the global RNG state travels in the checkpoint)."""
    import stages.rgb as rgb_stage

    args = ["--stage", "rgb", "-s", str(scene_dir), *RGB, *COMMON, "--set", "rgb.batch_views=2",
            "--set", "rgb.checkpoint_every=4"]
    full = tmp_path / "full"
    assert train_main([*args, "-m", str(full)]) == 0
    real, calls = rgb_stage.render, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 * 9 + 1:  # the first view of step 9
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(rgb_stage, "render", flaky)
    cut = tmp_path / "cut"
    assert train_main([*args, "-m", str(cut)]) == 130
    monkeypatch.setattr(rgb_stage, "render", real)
    assert (cut / "rgb" / "ckpt.pt").is_file() and not (cut / "rgb" / "done.json").exists()
    p = torchrun([*args, "-m", str(cut)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("at step 8") == 1, p.stdout  # rank 0 alone says it
    _assert_same(_ply(full, "rgb"), _ply(cut, "rgb"))


def test_batch_that_does_not_split_is_one_line(scene_dir, tmp_path):
    p = torchrun(["--stage", "rgb", "-s", str(scene_dir), "-m", str(tmp_path / "r"), *RGB, *COMMON,
                  "--set", "rgb.batch_views=3"])
    assert p.returncode != 0
    assert "rgb.batch_views=3 does not split over 2 ranks" in p.stderr
    assert "Traceback" not in p.stderr.split("rgb.batch_views=3")[0][-2000:]


@pytest.mark.gpu
def test_two_gpus_train_the_gaussians_of_one_gpu(scene_dir, tmp_path):
    """nccl, one GPU per rank, against one GPU rendering both views per step. gsplat's atomic adds make
    GPU runs differ in the last bits, so densification is off and the tolerance is loose."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    args = ["--stage", "rgb", "-s", str(scene_dir), *RGB, *COMMON, "--set", "rgb.densify.enabled=false",
            "--set", "run.device=cuda"]
    assert train_main([*args, "-m", str(tmp_path / "one"), "--set", "rgb.batch_views=2"]) == 0
    p = torchrun([*args, "-m", str(tmp_path / "two")])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "2 ranks (nccl)" in p.stdout
    _assert_same(_ply(tmp_path / "one", "rgb"), _ply(tmp_path / "two", "rgb"), atol=1e-3)
