"""Bad input answered in one line: every case runs the real command (train / eval_lerf / preprocess)
on a tiny generated scene and checks the exit status 2, that stderr is ONE line that starts with
``error: <the offending path>`` and says what is wrong (no traceback), that nothing already written
was lost, and, where it makes sense, that the corrected command then succeeds.

The table of these messages is docs/bad_input.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval_lerf
import preprocess.run as prun
from preprocess.synthetic import generate_scene
from scene.dataset import load_scene
from scene.language_features import load_clip
from scene.lerf_eval import evaluate_scene
from train import main as train_main

REPO = Path(__file__).resolve().parent.parent
TINY = {"n_views": 8, "width": 48, "height": 36, "n_objects": 3, "n_labelled": 2, "n_points": 800}
FAST = ["--set", "rgb.iterations=20", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
        "--set", "rgb.densify.enabled=false", "--set", "instance.iterations=10", "--set", "instance.preview_every=0",
        "--set", "instance.checkpoint_every=0", "--set", "instance.num_samples=1024", "--set", "run.progress=false",
        "--set", "run.num_threads=1"]
STAGES = ("rgb", "instance", "mapping")


# ---------------------------------------------------------------------------------------------
# helpers and shared fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster on a loaded machine; restored for the other test files."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train(stage, scene, run, *extra):
    return train_main(["--stage", stage, "-s", str(scene), "-m", str(run), *FAST, *extra])


def one_line_error(capsys, path, *needles) -> str:
    """stderr is exactly ``error: <path>...`` on one line, no traceback; returns it."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {path}"), (str(path), lines[0])
    for n in needles:
        assert n in lines[0], (n, lines[0])
    if os.environ.get("SHOW_MESSAGES"):
        print("\nMESSAGE:", lines[0], file=sys.__stdout__)
    return lines[0]


def snapshot(folder: Path, skip=("config.yaml", ".lock")) -> dict:
    """{relative path: sha256} of every file below ``folder`` (stage configs are rewritten by design)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name not in skip}


def kept(before: dict, folder: Path) -> None:
    """Every file of ``before`` is still there with the same content."""
    now = snapshot(folder)
    lost = {k for k, v in before.items() if now.get(k) != v}
    assert not lost, f"lost or changed: {sorted(lost)}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    generate_scene(root, "a", seed=1, preset="clean", overrides=TINY, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert [train(s, data / "a", run) for s in STAGES] == [0, 0, 0]
    return run


@pytest.fixture()
def scene(data, tmp_path) -> Path:
    """A private copy of the scene (images, sparse/0, language_features)."""
    return Path(shutil.copytree(data / "a", tmp_path / "a"))


def run_upto(trained: Path, tmp_path: Path, last: str) -> Path:
    """A private copy of the trained run with the stages after ``last`` removed."""
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    for s in STAGES[STAGES.index(last) + 1:]:
        shutil.rmtree(run / s)
    return run


def truncate(path: Path, frac: float = 0.5) -> bytes:
    """Cut ``path`` to ``frac`` of its size; returns the original bytes."""
    full = path.read_bytes()
    path.write_bytes(full[:int(len(full) * frac)])
    return full


# ---------------------------------------------------------------------------------------------
# the scene folder
# ---------------------------------------------------------------------------------------------
def test_missing_scene_folder(tmp_path, capsys):
    nope, run = tmp_path / "nope", tmp_path / "run"
    assert train("rgb", nope, run) == 2
    err = one_line_error(capsys, nope, "scene folder not found")
    assert "sparse" not in err
    assert not run.exists()
    with pytest.raises(FileNotFoundError, match=r"nope: scene folder not found"):
        load_scene(nope)


def test_missing_scene_folder_as_a_process(tmp_path):
    """The real process: exit status 2, one line on stderr, no traceback."""
    out = subprocess.run([sys.executable, "train.py", "--stage", "rgb", "-s", str(tmp_path / "nope"),
                          "-m", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {tmp_path / 'nope'}"), out.stderr
    assert not (tmp_path / "run").exists()


def test_no_images_folder(scene, tmp_path, capsys):
    run = tmp_path / "run"
    (scene / "images").rename(scene / "moved")
    assert train("rgb", scene, run) == 2
    one_line_error(capsys, scene / "images", "image folder not found", "sparse/0/images.txt", "data.images")
    assert not run.exists()
    (scene / "moved").rename(scene / "images")
    assert train("rgb", scene, run) == 0


def _to_jpeg(scene: Path) -> None:
    """The same scene with JPEG images (names in images.txt rewritten)."""
    for p in sorted((scene / "images").glob("*.png")):
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"), quality=95)
        p.unlink()
    t = scene / "sparse" / "0" / "images.txt"
    t.write_text(re.sub(r"(frame_\d+)\.png$", r"\1.jpg", t.read_text(), flags=re.M))


def test_truncated_png_and_jpeg(scene, tmp_path, capsys):
    run = tmp_path / "run"
    png = scene / "images" / "frame_00003.png"
    full = truncate(png, 2 / 3)
    assert train("rgb", scene, run) == 2
    one_line_error(capsys, png, "cannot decode image", "truncated or corrupt", "replace the file")
    assert not run.exists()  # found while loading the scene: before the run dir is made
    assert prun.main(["-s", str(scene), "--output", "lf2", "--device", "cpu"]) == 2  # before any weights
    one_line_error(capsys, png, "cannot read image, the file is truncated or corrupt")
    assert not (scene / "lf2").exists()
    png.write_bytes(full)

    _to_jpeg(scene)
    jpg = scene / "images" / "frame_00005.jpg"
    full = truncate(jpg, 2 / 3)
    assert train("rgb", scene, run) == 2
    one_line_error(capsys, jpg, "cannot decode image", "truncated or corrupt")
    assert not run.exists()
    jpg.write_bytes(full)
    assert train("rgb", scene, run) == 0


def test_listed_image_missing(scene, tmp_path, capsys):
    img = scene / "images" / "frame_00005.png"
    img.unlink()
    assert train("rgb", scene, tmp_path / "run") == 2
    one_line_error(capsys, img, "not found (listed as 'frame_00005.png' in", "sparse/0/images.txt",
                   "restore the image")
    assert not (tmp_path / "run").exists()


def test_unlisted_image_is_a_warning(scene, tmp_path, capsys):
    """COLMAP often registers a subset of the images: the others are skipped with one warning line."""
    shutil.copy(scene / "images" / "frame_00001.png", scene / "images" / "not_registered.png")
    assert train("rgb", scene, tmp_path / "run") == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "not_registered.png" in ln]
    assert len(warn) == 1 and warn[0].startswith(f"warning: {scene / 'images'}: 1 image file(s) not registered"), warn
    assert len(load_scene(scene).all_cameras) == 8


def test_distorted_camera(scene, tmp_path, capsys):
    cams = scene / "sparse" / "0" / "cameras.txt"
    lines = cams.read_text().splitlines()
    tok = lines[-1].split()  # 1 PINHOLE W H fx fy cx cy
    lines[-1] = " ".join([tok[0], "OPENCV", *tok[2:], "0.1", "0", "0", "0"])
    cams.write_text("\n".join(lines) + "\n")
    assert train("rgb", scene, tmp_path / "run") == 2
    one_line_error(capsys, cams, "camera 1 (OPENCV) has non-zero distortion", "colmap image_undistorter")
    assert not (tmp_path / "run").exists()


def test_empty_points3D(scene, tmp_path, capsys):
    """No sparse points is not an error: the rgb stage starts from a random cloud and says so. A
    points3D.bin of 0 bytes (never written) is."""
    pts = scene / "sparse" / "0" / "points3D.txt"
    pts.write_text("# 3D point list with one line of data per point:\n# Number of points: 0\n")
    assert train("rgb", scene, tmp_path / "run", "--set", "rgb.random_init_points=2000") == 0
    assert "the COLMAP model has no 3D points: using a random initialisation" in capsys.readouterr().out

    from scene.colmap import read_model, write_model
    sparse = scene / "sparse" / "0"
    write_model(sparse, *read_model(sparse), ext=".bin")
    (sparse / "points3D.bin").write_bytes(b"")
    assert train("rgb", scene, tmp_path / "run2") == 2
    one_line_error(capsys, sparse / "points3D.bin", "empty file (0 bytes)")
    assert not (tmp_path / "run2").exists()


# ---------------------------------------------------------------------------------------------
# SAM / CLIP feature files
# ---------------------------------------------------------------------------------------------
def _wrong_size(f: Path, _):
    np.save(f.parent / f.name.replace("_f.npy", "_s.npy"), np.zeros((4, 10, 10), np.float32))


def _ids_beyond_rows(f: Path, _):
    s_path = f.parent / f.name.replace("_f.npy", "_s.npy")
    s = np.load(s_path)
    s[3, 0, 0] = np.load(f).shape[0] + 4
    np.save(s_path, s)


def _nan_row(f: Path, _):
    a = np.load(f)
    a[1, 7] = np.nan
    np.save(f, a)


def _missing_f(f: Path, _):
    f.unlink()


FEATURE_CASES = {  # name: (how to break frame_00004's files, which file the message names, what it says)
    "wrong_hw": (_wrong_size, "_s.npy", "id map is 10x10 but the view frame_00004 is rendered at 48x36"),
    "ids_beyond_rows": (_ids_beyond_rows, "_s.npy", "mask ids range "),
    "nan_in_f": (_nan_row, "_f.npy", "1 of "),
    "missing_f": (_missing_f, "_f.npy", "not found (1 of 8 views lack their _s.npy/_f.npy"),
}


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_bad_feature_files_stop_the_instance_stage_before_training(case, trained, scene, tmp_path, capsys):
    brk, bad, says = FEATURE_CASES[case]
    run = run_upto(trained, tmp_path, "rgb")
    before = snapshot(run)
    folder = scene / "language_features"
    backup = {p.name: p.read_bytes() for p in folder.glob("frame_00004_*.npy")}
    brk(folder / "frame_00004_f.npy", scene)
    assert train("instance", scene, run) == 2
    err = one_line_error(capsys, folder / f"frame_00004{bad}", says)
    if case == "ids_beyond_rows":
        assert "rows" in err and "do not belong together" in err
    if case == "nan_in_f":
        assert "NaN or inf" in err
    kept(before, run)  # the rgb stage is untouched
    assert not (run / "instance" / "ckpt.pt").exists() and not (run / "instance" / "point_cloud.ply").exists()
    for name, b in backup.items():
        (folder / name).write_bytes(b)
    assert train("instance", scene, run) == 0


def test_bad_feature_file_keeps_a_finished_instance_stage(trained, scene, tmp_path, capsys):
    run = run_upto(trained, tmp_path, "instance")
    before = snapshot(run)
    _nan_row(scene / "language_features" / "frame_00004_f.npy", scene)
    assert train("instance", scene, run) == 2
    one_line_error(capsys, scene / "language_features" / "frame_00004_f.npy", "NaN or inf")
    kept(before, run)


def test_nan_in_f_is_rejected_by_the_mapping_stage(trained, scene, tmp_path, capsys):
    """Without the check, one NaN view makes the whole language field NaN (every query selects nothing)."""
    run = run_upto(trained, tmp_path, "instance")
    before = snapshot(run)
    f = scene / "language_features" / "frame_00006_f.npy"
    a = np.load(f)
    a[0, :] = np.inf
    np.save(f, a)
    assert train("mapping", scene, run) == 2
    one_line_error(capsys, f, "contain NaN or inf (e.g. row 0)", "preprocess.run")
    kept(before, run)
    assert not (run / "mapping" / "pairs.pt").exists() and not (run / "mapping" / "language_field.pt").exists()
    with pytest.raises(ValueError, match=r"frame_00006_f\.npy: 1 of \d+ embedding rows contain NaN or inf"):
        load_clip(scene, load_scene(scene).all_cameras[5])


# ---------------------------------------------------------------------------------------------
# models and checkpoints in the run dir
# ---------------------------------------------------------------------------------------------
def test_truncated_init_ply(trained, scene, tmp_path, capsys):
    ply = tmp_path / "model.ply"
    shutil.copy(trained / "rgb" / "point_cloud.ply", ply)
    full = truncate(ply)
    run = tmp_path / "run"
    assert train("rgb", scene, run, "--init_ply", str(ply)) == 2
    one_line_error(capsys, ply, "PLY file is truncated", "re-export or re-copy it")
    assert not (run / "rgb" / "point_cloud.ply").exists()
    ply.write_bytes(full)
    assert train("rgb", scene, run, "--init_ply", str(ply)) == 0
    assert (run / "rgb" / "done.json").is_file()


def test_truncated_init_ply_keeps_a_finished_rgb_stage(trained, scene, tmp_path, capsys):
    run = run_upto(trained, tmp_path, "rgb")
    before = snapshot(run)
    ply = tmp_path / "model.ply"
    shutil.copy(trained / "rgb" / "point_cloud.ply", ply)
    truncate(ply)
    assert train("rgb", scene, run, "--init_ply", str(ply)) == 2
    one_line_error(capsys, ply, "PLY file is truncated")
    kept(before, run)


def test_truncated_checkpoint_of_an_interrupted_stage(trained, scene, tmp_path, capsys):
    run = run_upto(trained, tmp_path, "rgb")
    (run / "rgb" / "done.json").unlink()  # interrupted: a checkpoint, no done record
    ckpt = run / "rgb" / "ckpt.pt"
    truncate(ckpt)
    before = snapshot(run)
    assert train("rgb", scene, run) == 2
    one_line_error(capsys, ckpt, "not a valid COS3D checkpoint", "truncated or corrupt", "--force")
    kept(before, run)  # the damaged checkpoint is left for the user to inspect
    assert train("rgb", scene, run, "--force") == 0
    assert (run / "rgb" / "done.json").is_file()


# ---------------------------------------------------------------------------------------------
# evaluation labels
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def labelled(data, tmp_path):
    """A private copy of the labels and perfect predictions (the gt masks themselves); one eval done."""
    lab = Path(shutil.copytree(data / "label", tmp_path / "label"))
    runs = tmp_path / "runs"
    shutil.copytree(lab / "a" / "gt", runs / "a" / "renders")
    argv = ["--scenes", "a", "--label_root", str(lab), "--runs_root", str(runs)]
    assert eval_lerf.main(argv) == 0
    return lab / "a", runs, argv


def test_label_json_that_is_not_json(labelled, capsys):
    lab, runs, argv = labelled
    before = snapshot(runs)
    frame = "frame_00002"
    js = lab / f"{frame}.json"
    good = js.read_bytes()
    shutil.rmtree(lab / "gt" / frame)  # so the JSON is needed
    js.write_text("{ this is not json")
    capsys.readouterr()
    assert eval_lerf.main(argv) == 2
    one_line_error(capsys, js, "not valid JSON")
    kept(before, runs)  # metrics.json / metrics.csv of the last good run
    assert not (lab / "gt" / frame).exists() and not list((lab / "gt").glob(".*"))
    js.write_bytes(good)
    assert eval_lerf.main(argv) == 0
    assert (lab / "gt" / frame / "toy elephant.png").is_file()


def test_gt_mask_of_the_wrong_size(labelled, capsys):
    lab, runs, argv = labelled
    before = snapshot(runs)
    g = lab / "gt" / "frame_00002" / "toy elephant.png"
    Image.open(g).resize((50, 36)).save(g)
    capsys.readouterr()
    assert eval_lerf.main(argv) == 2
    one_line_error(capsys, g, "is 50x36 (WxH) but", "frame_00002.json labels a 48x36 (WxH) frame", "regenerated")
    kept(before, runs)
    shutil.rmtree(g.parent)  # as the message says: regenerated from the JSON
    assert eval_lerf.main(argv) == 0
    assert json.loads((runs / "metrics.json").read_text())["mean"]["mIoU"] == pytest.approx(100.0)


def test_binarize_threshold_decides_which_pixels_count(tmp_path, capsys):
    """gt and prediction are foreground where value > binarize: 10 (OpenGaussian) or another."""
    gt = np.array([[0, 5, 50, 200]], np.uint8)
    pred = np.array([[0, 50, 50, 200]], np.uint8)
    for root, a in ((tmp_path / "label" / "s" / "gt", gt), (tmp_path / "runs" / "s" / "renders", pred)):
        (root / "f1").mkdir(parents=True)
        Image.fromarray(a).save(root / "f1" / "cup.png")  # uint8 [H, W]: mode L
    gt_dir, pred_dir = tmp_path / "label" / "s" / "gt", tmp_path / "runs" / "s" / "renders"
    # > 10 (the default): gt pixels 2, 3 against predicted 1, 2, 3
    assert evaluate_scene(gt_dir, pred_dir)["per_unit"][0]["iou"] == pytest.approx(2 / 3)
    assert evaluate_scene(gt_dir, pred_dir, binarize=4)["per_unit"][0]["iou"] == pytest.approx(1.0)
    assert evaluate_scene(gt_dir, pred_dir, binarize=100)["per_unit"][0]["iou"] == pytest.approx(1.0)  # {200}
    assert evaluate_scene(gt_dir, pred_dir, binarize=255)["per_unit"][0]["iou"] == 0.0  # nothing counts
    argv = ["--scenes", "s", "--label_root", str(tmp_path / "label"), "--runs_root", str(tmp_path / "runs")]
    assert eval_lerf.main(argv + ["--binarize", "100"]) == 0
    assert json.loads((tmp_path / "runs" / "metrics.json").read_text())["mean"]["mIoU"] == pytest.approx(100.0)
    assert eval_lerf.main(argv) == 0  # default 10
    assert json.loads((tmp_path / "runs" / "metrics.json").read_text())["mean"]["mIoU"] == pytest.approx(200 / 3)
    capsys.readouterr()
    assert eval_lerf.main(argv + ["--binarize", "300"]) == 2
    assert capsys.readouterr().err.strip() == "error: --binarize 300: expected a grayscale threshold in 0..255"


# ---------------------------------------------------------------------------------------------
# preprocessing weights
# ---------------------------------------------------------------------------------------------
def test_garbage_sam_checkpoint(scene, tmp_path, capsys):
    ck = tmp_path / "ckpts"
    ck.mkdir()
    (ck / "open_clip_pytorch_model.bin").write_bytes(b"\0" * 64)  # never read: SAM loads first
    junk = ck / "sam_vit_h_4b8939.pth"
    argv = ["-s", str(scene), "--output", "lf2", "--ckpt_dir", str(ck), "--device", "cpu"]
    for content, says in ((b"not a checkpoint" * 64, "it is not a torch.save file"),
                          (None, "the file is truncated or corrupt")):
        if content is None:  # a real torch.save file, cut short
            torch.save({"w": torch.zeros(1000)}, junk)
            truncate(junk)
        else:
            junk.write_bytes(content)
        assert prun.main(argv) == 2
        err = one_line_error(capsys, junk, "cannot read as a SAM vit_h checkpoint, not a valid checkpoint file",
                             says, "re-download it from https://dl.fbaipublicfiles.com/")
        assert "weights_only" not in err  # never the unsafe "re-run with weights_only=False" advice
        assert not (scene / "lf2").exists()


def test_ckpt_dir_that_is_a_file(scene, tmp_path, capsys):
    f = tmp_path / "ckpts.tar"
    f.write_bytes(b"x")
    assert prun.main(["-s", str(scene), "--output", "lf2", "--ckpt_dir", str(f), "--device", "cpu"]) == 2
    one_line_error(capsys, f, "--ckpt_dir is a file, not a folder")
    assert not (scene / "lf2").exists()
