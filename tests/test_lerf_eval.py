"""LERF-OVS 3D evaluation protocol (docs/method.md §7.1-7.3) on hand-made masks with hand-computed numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_lerf
from scene.lerf_eval import evaluate, evaluate_scene, flat_pred_name, format_table, iou, write_metrics
from scene.lerf_labels import ensure_gt, gt_masks_from_json, labelled_frames, read_gt

REPO = Path(__file__).resolve().parent.parent
H, W = 4, 4


def save(path: Path, mask_or_values, **kw) -> None:
    """bool mask -> 0/255 PNG; uint8 array -> written as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(mask_or_values)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    Image.fromarray(a).save(path, **kw)


def mask(*pixels, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for r, c in pixels:
        m[r, c] = True
    return m


# ----------------------------------------------------------------------------------------------
# IoU and per-scene aggregation
# ----------------------------------------------------------------------------------------------

def test_iou_small_masks():
    assert iou(mask((0, 0), (0, 1)), mask((0, 0), (0, 1))) == 1.0
    assert iou(mask((0, 0)), mask((0, 0), (0, 1))) == 0.5
    assert iou(mask((0, 0), (1, 1)), mask((0, 0), (2, 2))) == pytest.approx(1 / 3)
    assert iou(mask((3, 3)), mask((0, 0))) == 0.0
    assert iou(mask(), mask()) == 0.0  # empty union -> 0
    with pytest.raises(ValueError, match=r"prediction 5x4 \(WxH\) vs gt 4x4 \(WxH\)"):
        iou(np.zeros((4, 5), bool), np.zeros((4, 4), bool))


def _four_unit_scene(root: Path):
    """Units with IoU 1, 0.5, 0.25 (exactly) and 0 (prediction missing)."""
    gt, pred = root / "gt", root / "pred"
    cases = {  # (frame, category): (gt mask, pred mask or None)
        ("frame_00001", "Stainless steel pots"): (mask((0, 0), (0, 1)), mask((0, 0), (0, 1))),
        ("frame_00001", "rubber-duck"): (mask((1, 0), (1, 1)), mask((1, 0))),
        ("frame_00002", "cup"): (mask((2, 0), (2, 1), (2, 2), (2, 3)), mask((2, 3))),
        ("frame_00002", "Waldo"): (mask((3, 3)), None),
    }
    for (fr, cat), (g, p) in cases.items():
        save(gt / fr / f"{cat}.png", g)
        if p is not None:
            save(pred / fr / f"{cat}.png", p)
    return gt, pred


def test_scene_metrics_by_hand(tmp_path):
    gt, pred = _four_unit_scene(tmp_path)
    r = evaluate_scene(gt, pred)
    ious = {(u["frame"], u["category"]): u["iou"] for u in r["per_unit"]}
    assert ious == {("frame_00001", "Stainless steel pots"): 1.0, ("frame_00001", "rubber-duck"): 0.5,
                    ("frame_00002", "cup"): 0.25, ("frame_00002", "Waldo"): 0.0}
    assert r["units"] == 4 and r["missing"] == 1
    assert [u["category"] for u in r["per_unit"] if u["missing"]] == ["Waldo"]
    assert r["mIoU"] == pytest.approx(100 * (1 + 0.5 + 0.25 + 0) / 4)  # 43.75
    assert r["Acc@0.25"] == pytest.approx(100 * 2 / 4)  # 1 and 0.5; 0.25 is not > 0.25
    assert r["Acc@0.5"] == pytest.approx(100 * 1 / 4)  # only 1; 0.5 is not > 0.5


def test_flat_prediction_layout(tmp_path):
    gt, pred = _four_unit_scene(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in pred.rglob("*.png"):
        os.replace(p, flat / f"{p.parent.name}_{p.name}")
    r = evaluate_scene(gt, flat, pred_name=flat_pred_name)
    assert (r["units"], r["missing"]) == (4, 1)
    assert r["mIoU"] == pytest.approx(43.75)


def test_binarisation_threshold_png_and_jpg(tmp_path):
    # gt values 10 are background, 11 foreground; 8x8-aligned flat blocks survive JPEG exactly.
    vals = np.full((16, 16), 10, np.uint8)
    vals[:, 8:] = 11
    save(tmp_path / "gt" / "f" / "a.png", vals)
    save(tmp_path / "gt" / "f" / "b.jpg", vals, quality=100)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "gt" / "f" / "b.jpg")), vals)  # precondition
    gt = read_gt(tmp_path / "gt")
    expected = np.zeros((16, 16), bool)
    expected[:, 8:] = True
    assert set(gt) == {"f"} and set(gt["f"]) == {"a", "b"}
    assert np.array_equal(gt["f"]["a"], expected) and np.array_equal(gt["f"]["b"], expected)
    # predictions: 'L' image with the same edge, and an RGB image (converted to L: grey stays grey)
    pred = np.full((16, 16), 10, np.uint8)
    pred[:, 12:] = 11  # 4 of the 8 gt columns -> IoU 0.5
    save(tmp_path / "pred" / "f" / "a.png", pred)
    save(tmp_path / "pred" / "f" / "b.png", np.repeat(vals[..., None], 3, axis=2))  # RGB, IoU 1
    r = evaluate_scene(tmp_path / "gt", tmp_path / "pred")
    assert {u["category"]: u["iou"] for u in r["per_unit"]} == {"a": 0.5, "b": 1.0}


# ----------------------------------------------------------------------------------------------
# gt generation from the label JSON
# ----------------------------------------------------------------------------------------------

def _label_json(path: Path, h=6, w=8):
    data = {"info": {"name": path.stem + ".jpg", "width": w, "height": h},
            "objects": [
                {"category": "cup", "bbox": [1, 1, 3, 2], "segmentation": [[1, 1], [3, 1], [3, 2], [1, 2]]},
                {"category": "Stainless steel pots", "bbox": [5, 0, 7, 5],
                 "segmentation": [[5.9, 0.2], [7, 0], [7, 5], [5, 5.7]]},  # floats truncate to int
                {"category": "cup", "bbox": [0, 4, 1, 5], "segmentation": [[0, 4], [1, 4], [1, 5], [0, 5]]},
            ]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _expected_masks():
    cup = np.zeros((6, 8), bool)
    cup[1:3, 1:4] = True  # fillPoly includes the polygon boundary
    cup[4:6, 0:2] = True  # second polygon of the same category, merged
    pots = np.zeros((6, 8), bool)
    pots[0:6, 5:8] = True
    return {"cup": cup, "Stainless steel pots": pots}


def test_gt_masks_from_json(tmp_path):
    _label_json(tmp_path / "frame_00003.json")
    got = gt_masks_from_json(tmp_path / "frame_00003.json")
    exp = _expected_masks()
    assert set(got) == set(exp)
    for k in exp:
        assert got[k].dtype == bool and np.array_equal(got[k], exp[k]), k


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        gt_masks_from_json(tmp_path / "broken.json")
    (tmp_path / "nokeys.json").write_text(json.dumps({"objects": []}))
    with pytest.raises(ValueError, match="nokeys.json.*info.height"):
        gt_masks_from_json(tmp_path / "nokeys.json")
    (tmp_path / "badseg.json").write_text(json.dumps(
        {"info": {"width": 4, "height": 4}, "objects": [{"category": "a", "segmentation": [1, 2, 3]}]}))
    with pytest.raises(ValueError, match="badseg.json.*segmentation"):
        gt_masks_from_json(tmp_path / "badseg.json")


def test_ensure_gt_generates_and_never_overwrites(tmp_path):
    scene = tmp_path / "label" / "kitchen"
    _label_json(scene / "frame_00003.json")
    _label_json(scene / "frame_00009.json")
    # frame_00009 already has a (deliberately different) gt file: it must stay as it is
    existing = scene / "gt" / "frame_00009" / "cup.png"  # the very name generation would write
    save(existing, mask((0, 0), shape=(6, 8)))
    before = existing.read_bytes()
    # a gt-only frame (no JSON) also counts as labelled
    save(scene / "gt" / "frame_00011" / "plate.png", mask((1, 1), shape=(6, 8)))
    assert labelled_frames(tmp_path / "label", "kitchen") == ["frame_00003", "frame_00009", "frame_00011"]

    gt_dir = ensure_gt(tmp_path / "label", "kitchen")
    assert gt_dir == scene / "gt"
    assert existing.read_bytes() == before
    assert sorted(p.name for p in (gt_dir / "frame_00009").iterdir()) == ["cup.png"]
    assert sorted(p.name for p in gt_dir.iterdir()) == ["frame_00003", "frame_00009", "frame_00011"]  # no temp dirs
    png = np.asarray(Image.open(gt_dir / "frame_00003" / "cup.png"))
    assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
    gt = read_gt(gt_dir)
    exp = _expected_masks()
    assert set(gt["frame_00003"]) == set(exp)
    for k in exp:
        assert np.array_equal(gt["frame_00003"][k], exp[k])
    assert np.array_equal(gt["frame_00009"]["cup"], mask((0, 0), shape=(6, 8)))
    # a second call changes nothing
    stamp = {p: p.stat().st_mtime_ns for p in gt_dir.rglob("*") if p.is_file()}
    ensure_gt(tmp_path / "label", "kitchen")
    assert stamp == {p: p.stat().st_mtime_ns for p in gt_dir.rglob("*") if p.is_file()}


def test_ensure_gt_fills_an_empty_frame_folder(tmp_path):
    scene = tmp_path / "label" / "kitchen"
    _label_json(scene / "frame_00003.json")
    (scene / "gt" / "frame_00003").mkdir(parents=True)
    gt = read_gt(ensure_gt(tmp_path / "label", "kitchen"))
    exp = _expected_masks()
    assert set(gt["frame_00003"]) == set(exp)
    assert all(np.array_equal(gt["frame_00003"][k], exp[k]) for k in exp)


def test_scene_without_labels(tmp_path):
    (tmp_path / "label" / "empty").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no labels"):
        ensure_gt(tmp_path / "label", "empty")
    with pytest.raises(FileNotFoundError, match="no label folder"):
        labelled_frames(tmp_path / "label", "absent")


# ----------------------------------------------------------------------------------------------
# several scenes, output files, CLI
# ----------------------------------------------------------------------------------------------

def _two_scenes(tmp_path):
    """s1: one unit with IoU 1. s2: three units with IoU 1/3, 0 (missing), 1."""
    lab, runs = tmp_path / "label", tmp_path / "runs"
    save(lab / "s1" / "gt" / "frame_00001" / "a.png", mask((0, 0)))
    save(runs / "s1" / "renders" / "frame_00001" / "a.png", mask((0, 0)))
    save(lab / "s2" / "gt" / "frame_00001" / "a.png", mask((0, 0), (1, 1)))
    save(runs / "s2" / "renders" / "frame_00001" / "a.png", mask((0, 0), (2, 2)))  # 1/3
    save(lab / "s2" / "gt" / "frame_00001" / "b.png", mask((3, 3)))  # missing prediction
    save(lab / "s2" / "gt" / "frame_00002" / "a.png", mask((1, 2)))
    save(runs / "s2" / "renders" / "frame_00002" / "a.png", mask((1, 2)))
    return lab, runs


def test_mean_is_unweighted_over_scenes(tmp_path):
    lab, runs = _two_scenes(tmp_path)
    res = evaluate(["s1", "s2"], lab, lambda s: runs / s / "renders")
    s2 = res["scenes"]["s2"]
    assert s2["mIoU"] == pytest.approx(100 * (1 / 3 + 0 + 1) / 3)
    assert s2["Acc@0.25"] == pytest.approx(100 * 2 / 3) and s2["Acc@0.5"] == pytest.approx(100 / 3)
    m = res["mean"]
    assert m["mIoU"] == pytest.approx((100 + 100 * (4 / 3) / 3) / 2)  # 72.22, not the pooled 58.33
    assert m["mIoU"] != pytest.approx(100 * (1 + 1 / 3 + 0 + 1) / 4)
    assert m["Acc@0.25"] == pytest.approx((100 + 200 / 3) / 2)
    assert m["Acc@0.5"] == pytest.approx((100 + 100 / 3) / 2)
    assert (m["units"], m["missing"]) == (4, 1)
    assert list(res["scenes"]) == ["s1", "s2"]


def test_write_metrics_csv_and_json(tmp_path):
    lab, runs = _two_scenes(tmp_path)
    res = evaluate(["s2", "s1"], lab, lambda s: runs / s / "renders")
    res["scenes"]["s1"]["text_encoder"] = "openclip ViT-B-16 laion2b_s34b_b88k"
    jpath, cpath = write_metrics(res, tmp_path / "out")
    assert cpath.read_text().splitlines() == [
        "scene_name,units,mIoU,Acc@0.25,Acc@0.5,text_encoder",
        "s2,3,44.44,66.67,33.33,",
        "s1,1,100.00,100.00,100.00,openclip ViT-B-16 laion2b_s34b_b88k",
        "mean,4,72.22,83.33,66.67,",
    ]
    back = json.loads(jpath.read_text())
    assert back["mean"]["mIoU"] == pytest.approx(res["mean"]["mIoU"])
    assert len(back["scenes"]["s2"]["per_unit"]) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "metrics.json"]
    table = format_table(res).splitlines()
    assert table[0].split() == ["scene", "units", "missing", "mIoU", "mAcc@0.25", "Acc@0.5"]
    assert table[-1].split() == ["mean", "4", "1", "72.22", "83.33", "66.67"]


def test_cli_success(tmp_path, capsys):
    lab, runs = _two_scenes(tmp_path)
    rc = eval_lerf.main(["--scenes", "s1", "s2", "--label_root", str(lab), "--runs_root", str(runs)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "s2: 3 units, text encoder unknown; 1 missing predictions scored 0: frame_00001/b" in out
    assert (runs / "metrics.csv").read_text().splitlines()[-1] == "mean,4,72.22,83.33,66.67,"


def test_cli_size_mismatch_exit_2(tmp_path, capsys):
    lab, runs = _two_scenes(tmp_path)
    save(runs / "s1" / "renders" / "frame_00001" / "a.png", np.zeros((5, 4), bool))
    rc = eval_lerf.main(["--scenes", "s1", "--label_root", str(lab), "--runs_root", str(runs)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "renders/frame_00001/a.png is 4x5 (WxH)" in err and "gt/frame_00001/a.png is 4x4 (WxH)" in err


def test_cli_missing_label_root_and_unlabelled_scene(tmp_path, capsys):
    lab, runs = _two_scenes(tmp_path)
    rc = eval_lerf.main(["--scenes", "s1", "--label_root", str(tmp_path / "nope"), "--runs_root", str(runs)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "label root" in err and "nope" in err and len(err.splitlines()) == 1
    (runs / "s3" / "renders").mkdir(parents=True)
    rc = eval_lerf.main(["--scenes", "s3", "--label_root", str(lab), "--runs_root", str(runs)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "s3" in err and len(err.splitlines()) == 1


def test_cli_help_runs_as_a_script():
    out = subprocess.run([sys.executable, "eval_lerf.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--scenes", "--label_root", "--runs_root", "--out", "--pred_layout", "--pred_subdir"):
        assert flag in out.stdout


# ----------------------------------------------------------------------------------------------
# real data (skipped unless LERF_OVS_ROOT points at the download with its label/ folder)
# ----------------------------------------------------------------------------------------------

SPEC_FRAMES = {  # docs/method.md §7.3
    "figurines": [41, 105, 152, 195], "teatime": [2, 25, 43, 107, 129, 140],
    "ramen": [6, 24, 60, 65, 81, 119, 128], "waldo_kitchen": [53, 66, 89, 140, 154],
}


@pytest.mark.data
@pytest.mark.skipif(not os.environ.get("LERF_OVS_ROOT"), reason="LERF_OVS_ROOT not set")
@pytest.mark.parametrize("scene", list(SPEC_FRAMES))
def test_real_labels_match_protocol(scene):
    lab = Path(os.environ["LERF_OVS_ROOT"]) / "label"
    assert labelled_frames(lab, scene) == [f"frame_{i:05d}" for i in SPEC_FRAMES[scene]]
    units = sum(len(gt_masks_from_json(lab / scene / f"frame_{i:05d}.json")) for i in SPEC_FRAMES[scene])
    assert units == eval_lerf.REFERENCE_UNITS[scene]
