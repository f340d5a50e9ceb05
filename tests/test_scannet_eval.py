"""ScanNet per-point protocol (OpenGaussian scripts/eval_scannet.py, spec §6.3) on hand-made point
labels with hand-computed numbers."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from scene.scannet import (NYU40_NAMES, SCANNET_SCENES, SUBSETS, evaluate_scenes, format_table, labels_from_scores,
                           opacity_valid, point_metrics, read_vertex_labels, write_metrics)

# 12 points: (gt, pred). Classes 1 wall, 2 floor, 5 chair, 7 table are in every subset; 3 cabinet is
# in 19 and 15 but not 10; 11 picture only in 19; 0 = unannotated is never evaluated.
#        pt:  0  1  2  3  4  5  6  7  8  9 10  11
GT = np.array([1, 1, 1, 2, 2, 5, 5, 7, 3, 3, 11, 0])
PRED = np.array([1, 1, 2, 2, 2, 5, 7, 7, 3, 1, 11, 1])
# 19 classes, points 0-10:            TP gt pred union  IoU  acc
#   1 wall   gt {0,1,2} pred {0,1,9}   2  3   3    4   1/2  2/3
#   2 floor  gt {3,4}   pred {2,3,4}   2  2   3    3   2/3  1
#   3 cab.   gt {8,9}   pred {8}       1  2   1    2   1/2  1/2
#   5 chair  gt {5,6}   pred {5}       1  2   1    2   1/2  1/2
#   7 table  gt {7}     pred {6,7}     1  1   2    2   1/2  1
#  11 pict.  gt {10}    pred {10}      1  1   1    1   1    1
#   mIoU = (1/2+2/3+1/2+1/2+1/2+1)/6 = 11/18 = 61.11 %, mAcc = (2/3+1+1/2+1/2+1+1)/6 = 7/9 = 77.78 %
# 15 classes, points 0-9 (picture dropped): the five rows above without 11
#   mIoU = (1/2+2/3+1/2+1/2+1/2)/5 = 8/15 = 53.33 %, mAcc = (2/3+1+1/2+1/2+1)/5 = 11/15 = 73.33 %
# 10 classes, points 0-7 (cabinet dropped too, so point 9's wall prediction leaves the wall row):
#   1 wall   gt {0,1,2} pred {0,1}     2  3   2    3   2/3  2/3
#   2 floor, 5 chair, 7 table as above
#   mIoU = (2/3+2/3+1/2+1/2)/4 = 7/12 = 58.33 %, mAcc = (2/3+1+1/2+1)/4 = 19/24 = 79.17 %
EXPECTED_A = {19: (100 * 11 / 18, 100 * 7 / 9), 15: (100 * 8 / 15, 100 * 11 / 15), 10: (100 * 7 / 12, 100 * 19 / 24)}


def test_constants():
    assert len(SCANNET_SCENES) == 10 and SCANNET_SCENES[0] == "scene0000_00"
    assert {k: len(v) for k, v in SUBSETS.items()} == {19: 19, 15: 15, 10: 10}
    assert set(SUBSETS[15]) == set(SUBSETS[19]) - {11, 24, 28, 36}
    assert set(SUBSETS[10]) <= set(SUBSETS[15]) and set(NYU40_NAMES) == set(SUBSETS[19])
    assert (NYU40_NAMES[28], NYU40_NAMES[33]) == ("shower curtain", "toilet")


@pytest.mark.parametrize("subset", [19, 15, 10])
def test_point_metrics_hand_computed(subset):
    r = point_metrics(PRED, GT, SUBSETS[subset])
    miou, macc = EXPECTED_A[subset]
    assert r["mIoU"] == pytest.approx(miou) and r["mAcc"] == pytest.approx(macc)
    assert r["points"] == {19: 11, 15: 10, 10: 8}[subset]  # gt 0 and gt outside the subset ignored
    present = {19: [1, 2, 3, 5, 7, 11], 15: [1, 2, 3, 5, 7], 10: [1, 2, 5, 7]}[subset]
    assert r["classes_present"] == present
    wall = r["per_class"][1]
    assert wall["name"] == "wall" and wall["gt_points"] == 3
    assert wall["pred_points"] == (2 if subset == 10 else 3)
    assert wall["iou"] == pytest.approx(100 * (2 / 3 if subset == 10 else 1 / 2))
    assert r["per_class"][4] == {"name": "bed", "iou": None, "acc": None, "gt_points": 0, "pred_points": 0}


def test_absent_class_not_averaged_even_when_predicted():
    # gt wall, wall, floor, floor; one wall point predicted as door (8), absent from the gt:
    # wall IoU 1/2 acc 1/2, floor IoU 1 acc 1 -> 75 / 75 (door averaged as 0 would give 50)
    r = point_metrics([1, 8, 2, 2], [1, 1, 2, 2], SUBSETS[10])
    assert (r["mIoU"], r["mAcc"]) == (pytest.approx(75.0), pytest.approx(75.0))
    assert r["classes_present"] == [1, 2]
    assert r["per_class"][8]["pred_points"] == 1 and r["per_class"][8]["iou"] is None


def test_unannotated_and_out_of_subset_points_ignored():
    # appending points with gt 0 or gt outside the subset (picture for 10 classes, 39 otherprop)
    # changes nothing, whatever they are predicted as
    gt = np.concatenate([GT, [0, 0, 11, 39]])
    pred = np.concatenate([PRED, [1, 2, 5, 7]])
    r = point_metrics(pred, gt, SUBSETS[10])
    assert (r["mIoU"], r["mAcc"]) == (pytest.approx(100 * 7 / 12), pytest.approx(100 * 19 / 24))
    assert r["points"] == 8


def test_valid_mask_drops_points():
    # 10 classes, point 7 (the only table gt) dropped: table is then absent (though predicted at 6)
    #   wall 2/3, 2/3; floor 2/3, 1; chair 1/2, 1/2
    #   mIoU = (2/3+2/3+1/2)/3 = 11/18 = 61.11 %, mAcc = (2/3+1+1/2)/3 = 13/18 = 72.22 %
    valid = np.ones(12, bool)
    valid[7] = False
    r = point_metrics(PRED, GT, SUBSETS[10], valid)
    assert (r["mIoU"], r["mAcc"]) == (pytest.approx(100 * 11 / 18), pytest.approx(100 * 13 / 18))
    assert r["points"] == 7 and 7 not in r["classes_present"]
    # point 6 (gt chair, pred table) dropped instead: wall 2/3, 2/3; floor 2/3, 1; chair 1, 1; table 1, 1
    #   mIoU = (2/3+2/3+1+1)/4 = 5/6 = 83.33 %, mAcc = (2/3+1+1+1)/4 = 11/12 = 91.67 %
    valid = np.ones(12, bool)
    valid[6] = False
    r = point_metrics(PRED, GT, SUBSETS[10], valid)
    assert (r["mIoU"], r["mAcc"]) == (pytest.approx(100 * 5 / 6), pytest.approx(100 * 11 / 12))


def test_opacity_valid_threshold():
    # sigmoid(-3) = 0.047 < 0.1 dropped; sigmoid(-2) = 0.119, sigmoid(0) = 0.5 kept
    assert opacity_valid([-3.0, -2.0, 0.0]).tolist() == [False, True, True]
    assert opacity_valid(np.array([[-2.2], [-2.19]])).tolist() == [False, True]  # logit(0.1) = -2.1972


def test_point_metrics_errors():
    with pytest.raises(ValueError, match=r"pred_ids must be \[3\]"):
        point_metrics([1, 2], [1, 2, 2], SUBSETS[10])
    with pytest.raises(ValueError, match=r"valid must be \[3\]"):
        point_metrics([1, 2, 2], [1, 2, 2], SUBSETS[10], valid=[True])
    with pytest.raises(ValueError, match="no point to evaluate"):
        point_metrics([1, 2], [0, 11], SUBSETS[10])


def test_labels_from_scores_argmax():
    scores = np.array([[0.1, 0.9, 0.3],
                       [0.8, 0.2, 0.1],
                       [0.2, 0.2, 0.7],
                       [0.5, 0.5, 0.0]])  # tie -> the earlier column
    assert labels_from_scores(scores, [1, 5, 7]).tolist() == [5, 1, 7, 1]
    with pytest.raises(ValueError, match=r"scores must be \[N, 2\]"):
        labels_from_scores(scores, [1, 5])


def _scores_19(pred_ids) -> np.ndarray:
    """One-hot scores over the 19 classes (columns in SUBSETS[19] order)."""
    s = np.zeros((len(pred_ids), 19))
    s[np.arange(len(pred_ids)), [SUBSETS[19].index(c) for c in pred_ids]] = 1.0
    return s


def _two_scenes():
    # scene B: gt wall, floor; point 0 scores picture 0.9 > wall 0.5, point 1 floor best.
    #   19 classes: wall predicted as picture: wall IoU 0 acc 0, floor 1, 1; picture absent -> 50 / 50
    #   15 and 10 classes: picture has no column, point 0 -> wall: 100 / 100
    sb = np.zeros((2, 19))
    sb[0, SUBSETS[19].index(11)], sb[0, SUBSETS[19].index(1)] = 0.9, 0.5
    sb[1, SUBSETS[19].index(2)] = 1.0
    return {"scene0000_00": (_scores_19(PRED), GT, None), "scene0062_00": (sb, np.array([1, 2]), None)}


def test_evaluate_scenes_per_subset_argmax_and_mean():
    res = evaluate_scenes(_two_scenes())
    assert list(res["scenes"]) == ["scene0000_00", "scene0062_00"]
    for s, (miou, macc) in EXPECTED_A.items():
        r = res["scenes"]["scene0000_00"][s]
        assert (r["mIoU"], r["mAcc"]) == (pytest.approx(miou), pytest.approx(macc))
    b = res["scenes"]["scene0062_00"]
    assert (b[19]["mIoU"], b[19]["mAcc"]) == (pytest.approx(50.0), pytest.approx(50.0))
    assert (b[15]["mIoU"], b[10]["mAcc"]) == (pytest.approx(100.0), pytest.approx(100.0))
    # unweighted scene means:
    #   19: mIoU (11/18+1/2)/2 = 5/9 = 55.56, mAcc (7/9+1/2)/2 = 23/36 = 63.89
    #   15: mIoU (8/15+1)/2 = 23/30 = 76.67, mAcc (11/15+1)/2 = 13/15 = 86.67
    #   10: mIoU (7/12+1)/2 = 19/24 = 79.17, mAcc (19/24+1)/2 = 43/48 = 89.58
    m = res["mean"]
    assert (m[19]["mIoU"], m[19]["mAcc"]) == (pytest.approx(100 * 5 / 9), pytest.approx(100 * 23 / 36))
    assert (m[15]["mIoU"], m[15]["mAcc"]) == (pytest.approx(100 * 23 / 30), pytest.approx(100 * 13 / 15))
    assert (m[10]["mIoU"], m[10]["mAcc"]) == (pytest.approx(100 * 19 / 24), pytest.approx(100 * 43 / 48))
    assert m[19]["points"] == 11 + 2
    # predicted ids instead of scores are used as they are, for every subset
    ids = evaluate_scenes({"a": (PRED, GT, None)}, subsets=[10])
    assert ids["scenes"]["a"][10]["mIoU"] == pytest.approx(100 * 7 / 12) and list(ids["mean"]) == [10]


def test_evaluate_scenes_errors():
    with pytest.raises(ValueError, match="no scenes"):
        evaluate_scenes({})
    with pytest.raises(ValueError, match=r"unknown class subset\(s\) \[20\]"):
        evaluate_scenes({"a": (PRED, GT, None)}, subsets=[20])
    with pytest.raises(ValueError, match="a: scores have 3 columns"):
        evaluate_scenes({"a": (np.zeros((12, 3)), GT, None)})
    with pytest.raises(ValueError, match="a, 10 classes: no point to evaluate"):
        evaluate_scenes({"a": ([1, 1], [0, 11], None)}, subsets=[10])


# ----------------------------------------------------------------------------------------------
# labels PLY
# ----------------------------------------------------------------------------------------------

def _write_ply(path, labels, text: bool, with_label: bool = True):
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1")]
    if with_label:
        fields.append(("label", "u2"))  # ScanNet stores it as ushort
    v = np.zeros(len(labels), dtype=fields)
    v["x"] = np.arange(len(labels))
    if with_label:
        v["label"] = labels
    face = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(face, "face")], text=text).write(str(path))


@pytest.mark.parametrize("text", [True, False], ids=["ascii", "binary"])
def test_read_vertex_labels(tmp_path, text):
    p = tmp_path / "scene0000_00_vh_clean_2.labels.ply"
    _write_ply(p, GT, text)
    lab = read_vertex_labels(p)
    assert lab.dtype == np.int64 and lab.tolist() == GT.tolist()


def test_read_vertex_labels_errors(tmp_path):
    missing = tmp_path / "nope.labels.ply"
    with pytest.raises(FileNotFoundError) as e:
        read_vertex_labels(missing)
    assert str(e.value).startswith(f"{missing}: no such file") and "\n" not in str(e.value)

    nolabel = tmp_path / "points3d.ply"
    _write_ply(nolabel, GT, text=False, with_label=False)
    with pytest.raises(ValueError) as e:
        read_vertex_labels(nolabel)
    msg = str(e.value)
    assert msg.startswith(f"{nolabel}: the vertex element has no 'label' property (properties: x, y, z, red)")
    assert "\n" not in msg

    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"not a ply at all\n")
    with pytest.raises(ValueError) as e:
        read_vertex_labels(garbage)
    assert str(e.value).startswith(f"{garbage}: not a readable PLY file") and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------

def test_write_metrics_csv_and_json(tmp_path):
    res = evaluate_scenes(_two_scenes())
    jpath, cpath = write_metrics(res, tmp_path / "out")
    assert cpath.read_text().splitlines() == [
        "scene_name,classes,points,classes_present,mIoU,mAcc",
        "scene0000_00,19,11,6,61.11,77.78",
        "scene0000_00,15,10,5,53.33,73.33",
        "scene0000_00,10,8,4,58.33,79.17",
        "scene0062_00,19,2,2,50.00,50.00",
        "scene0062_00,15,2,2,100.00,100.00",
        "scene0062_00,10,2,2,100.00,100.00",
        "mean,19,13,,55.56,63.89",
        "mean,15,12,,76.67,86.67",
        "mean,10,10,,79.17,89.58",
    ]
    rows = list(csv.DictReader(cpath.open()))
    assert float(rows[-1]["mAcc"]) == pytest.approx(round(res["mean"][10]["mAcc"], 2))
    back = json.loads(jpath.read_text())  # int keys come back as strings
    assert back["mean"]["19"]["mIoU"] == pytest.approx(res["mean"][19]["mIoU"])
    a19 = back["scenes"]["scene0000_00"]["19"]
    assert a19["mAcc"] == pytest.approx(100 * 7 / 9) and a19["per_class"]["2"]["iou"] == pytest.approx(200 / 3)
    assert a19["per_class"]["4"]["iou"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "metrics.json"]
    write_metrics(res, tmp_path / "out")  # replaced, no temporary files left
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "metrics.json"]

    table = format_table(res).splitlines()
    assert table[0].split() == ["scene", "19", "mIoU", "19", "mAcc", "15", "mIoU", "15", "mAcc", "10", "mIoU",
                                "10", "mAcc"]
    assert table[2].split() == ["scene0000_00", "61.11", "77.78", "53.33", "73.33", "58.33", "79.17"]
    assert table[-1].split() == ["mean", "55.56", "63.89", "76.67", "86.67", "79.17", "89.58"]
