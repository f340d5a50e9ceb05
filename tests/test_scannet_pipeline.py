"""The ScanNet protocol end to end (issue 17): script/train_scannet.sh + script/infer_scannet.sh on a
tiny generated room (preprocess/synthetic/room.py), tiny schedules (tests/readme_tiny.yaml).

* the frozen run's Gaussians are the labels PLY's vertices, in order;
* eval_scannet.py's numbers equal a direct numpy computation of the protocol from the run's language
  field and the room's hash text vectors: class = argmax cosine, Gaussians of opacity < 0.1 and points
  outside the subset dropped, IoU / recall per class present in the gt, their means;
* a run that is not the mesh vertices is refused in one line;
* ``data("SCANNET_ROOT")``: the real download's scenes load (cameras, vertices = labelled points).
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_scannet
from scene.encoders import HashTextEncoder
from scene.gaussian_model import load_ply
from scene.language_field import from_state
from scene.scannet import NYU40_NAMES, SCANNET_SCENES, SUBSETS, labels_path, read_points, read_vertex_labels
from scene_factory import one_line_error

REPO = Path(__file__).resolve().parent.parent
ROOM = "--views 8 --width 64 --height 48 --points 1500 --quiet"


@pytest.fixture(scope="module")
def scannet(tmp_path_factory):
    root = tmp_path_factory.mktemp("scannet")
    env = dict(os.environ, SYNTH_ROOT=str(root / "synth"), OUT_ROOT=str(root / "out"),
               EXTRA_ARGFILES=str(REPO / "tests" / "readme_tiny.yaml"), ROOM_ARGS=ROOM, PYTHONPATH=str(REPO))
    for script in ("train_scannet", "infer_scannet"):
        r = subprocess.run(["bash", str(REPO / "script" / f"{script}.sh")], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    scene = "scene0000_00"
    return root / "synth" / "scannet" / scene, root / "out" / "scannet_synthetic" / scene, r.stdout


def _reference(run: Path, src: Path, subset: int) -> tuple[float, float]:
    """The protocol by hand: numpy over the run's files."""
    params = load_ply(run / "instance" / "point_cloud.ply")
    lang = from_state(torch.load(run / "mapping" / "language_field.pt", weights_only=True)).dense().numpy()
    classes = SUBSETS[subset]
    text = HashTextEncoder().encode_numpy([NYU40_NAMES[c] for c in classes])
    lang = lang / np.linalg.norm(lang, axis=1, keepdims=True)
    pred = np.asarray(classes)[np.argmax(lang @ text.T, axis=1)]
    gt = read_vertex_labels(labels_path(src, src.name))
    keep = (1 / (1 + np.exp(-params["opacities"].numpy().reshape(-1))) >= 0.1) & np.isin(gt, classes)
    pred, gt = pred[keep], gt[keep]
    ious, accs = [], []
    for c in sorted(set(gt.tolist())):
        inter = np.sum((pred == c) & (gt == c))
        ious.append(inter / np.sum((pred == c) | (gt == c)))
        accs.append(inter / np.sum(gt == c))
    return 100 * float(np.mean(ious)), 100 * float(np.mean(accs))


def test_frozen_gaussians_are_the_labelled_vertices(scannet):
    src, run, _ = scannet
    means = load_ply(run / "instance" / "point_cloud.ply")["means"].numpy()
    np.testing.assert_array_equal(means, read_points(labels_path(src, src.name)))


def test_eval_scannet_is_the_protocol(scannet):
    src, run, out = scannet
    metrics = json.loads((run.parent / "metrics.json").read_text())
    assert "scene0000_00" in out and "19 mIoU" in out
    for subset in (19, 15, 10):
        m = metrics["scenes"]["scene0000_00"][str(subset)]
        miou, macc = _reference(run, src, subset)
        assert m["mIoU"] == pytest.approx(miou, abs=1e-6) and m["mAcc"] == pytest.approx(macc, abs=1e-6)
        assert metrics["mean"][str(subset)]["mIoU"] == pytest.approx(miou, abs=1e-6)
    csv = (run.parent / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("scene_name,classes") and len(csv) == 1 + 2 * 3


def test_a_run_that_is_not_the_vertices_is_refused(scannet, tmp_path, capsys):
    src, run, _ = scannet
    other = tmp_path / "data" / src.name
    other.mkdir(parents=True)
    pts = read_points(labels_path(src, src.name))
    labels = read_vertex_labels(labels_path(src, src.name))
    from plyfile import PlyData, PlyElement
    v = np.zeros(len(pts) - 1, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("label", "u2")])
    for i, k in enumerate("xyz"):
        v[k] = pts[1:, i]
    v["label"] = labels[1:]
    PlyData([PlyElement.describe(v, "vertex")]).write(str(labels_path(other, src.name)))
    assert eval_scannet.main(["--scenes", src.name, "--data_root", str(other.parent), "--runs_root", str(run.parent),
                              "--out", str(tmp_path / "m")]) == 2
    one_line_error(capsys, "are not the", "rgb.freeze_means")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# the real download (OpenGaussian's ScanNet scenes)
@pytest.mark.data("SCANNET_ROOT")
@pytest.mark.parametrize("scene", SCANNET_SCENES)
def test_real_scannet_scene_loads(scene):
    from scene.dataset import load_scene

    src = Path(os.environ["SCANNET_ROOT"]) / scene
    if not src.is_dir():
        pytest.skip(f"{src} not in the download")
    sc = load_scene(src, resolution=2, holdout_offset=0)
    assert len(sc.train_cameras) > 0
    labels = read_vertex_labels(labels_path(src, scene))
    assert len(sc.points_xyz) == len(labels)               # the Gaussians (= points3d.ply) are the labelled vertices
    assert set(np.unique(labels).tolist()) & set(SUBSETS[19])
