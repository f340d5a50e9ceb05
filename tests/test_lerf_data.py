"""The published LERF-OVS data (OpenGaussian's download), read unchanged by our loaders.

Runs only with ``LERF_OVS_ROOT`` pointing at the folder that holds ``figurines/``, ``teatime/``,
``ramen/``, ``waldo_kitchen/`` (each with images/, sparse/0/, language_features/) and
``label/<scene>/``. Nothing is written there (no ensure_gt: gt is read where it exists, else
rasterised in memory from the JSONs).
"""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scene.dataset import load_scene
from scene.language_features import check_folder, check_ids, feature_paths, load_clip, load_seg
from scene.lerf_labels import gt_masks_from_json, labelled_frames, read_gt

ROOT = os.environ.get("LERF_OVS_ROOT")
pytestmark = [pytest.mark.data, pytest.mark.skipif(not ROOT, reason="LERF_OVS_ROOT not set")]

UNITS = {"figurines": 56, "teatime": 59, "ramen": 71, "waldo_kitchen": 22}  # docs/method.md §7.3


def scene_units(label_root: Path, scene: str) -> tuple[int, int]:
    """(labelled frames, (frame, category) units) as the evaluation would count them, read-only."""
    frames = labelled_frames(label_root, scene)
    gt_dir = label_root / scene / "gt"
    gt = read_gt(gt_dir) if gt_dir.is_dir() else {}
    units = 0
    for fr in frames:
        if gt.get(fr):
            units += len(gt[fr])
        else:
            units += len(gt_masks_from_json(label_root / scene / f"{fr}.json"))
    return len(frames), units


def test_label_frames_and_units():
    label_root = Path(ROOT) / "label"
    counts = {s: scene_units(label_root, s) for s in UNITS}
    assert {s: u for s, (_, u) in counts.items()} == UNITS
    assert sum(f for f, _ in counts.values()) == 22


@pytest.mark.parametrize("scene", list(UNITS))
def test_language_features_format(scene):
    root = Path(ROOT) / scene
    cams = load_scene(root).all_cameras
    check_folder(root, cams)
    labelled = set(labelled_frames(Path(ROOT) / "label", scene))
    picks = {0, len(cams) // 2, len(cams) - 1} | {i for i, c in enumerate(cams) if c.image_name in labelled}
    for i in sorted(picks)[:8]:
        cam = cams[i]
        s_path, f_path = feature_paths(root, cam.image_name)
        s = np.load(s_path)
        with Image.open(cam.image_path) as im:
            w, h = im.size
        assert s.dtype in (np.float32, np.int16, np.int32), (s_path, s.dtype)
        assert s.shape == (4, h, w), (s_path, s.shape, (h, w))
        assert np.array_equal(s, np.round(s)) and s.min() >= -1
        f = load_clip(root, cam)
        assert f.ndim == 2 and f.shape[1] == 512 and np.load(f_path, mmap_mode="r").dtype == np.float32
        assert int(s.max()) < f.shape[0]
        for lvl in range(4):
            seg = load_seg(root, cam, lvl)
            assert tuple(seg.shape) == (cam.height, cam.width)
            check_ids(seg, f.shape[0], str(s_path))
