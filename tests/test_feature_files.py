"""The LangSplat feature files' one writer (``scene.language_features.id_maps`` / ``save_features``):
what it writes is what the loader reads, and it refuses arrays the loader would refuse."""
import numpy as np
import pytest
import torch

from scene.cameras import Camera
from scene.language_features import LEVELS, check_folder, id_maps, load_clip, load_seg, save_features


def camera(name, w=6, h=4):
    return Camera(uid=0, image_name=name, R=np.eye(3), t=np.zeros(3), K=np.eye(3), width=w, height=h)


def test_id_maps_offsets_and_lazy_levels():
    a = np.zeros((4, 6), bool); a[:2] = True
    b = np.zeros((4, 6), bool); b[1:] = True
    seg, counts = id_maps([[a, b], [], [a], [b]], 4, 6)
    assert seg.dtype == np.float32 and counts == [2, 0, 1, 1]
    assert np.array_equal(seg[0], np.where(b, 1, 0)) and np.all(seg[1] == -1)
    assert np.array_equal(seg[2], np.where(a, 2, -1)) and np.array_equal(seg[3], np.where(b, 3, -1))
    lazy, _ = id_maps((lv for lv in [[a, b], [], [a], [b]]), 4, 6)  # a generator: one level at a time
    assert np.array_equal(lazy, seg)
    with pytest.raises(ValueError, match="4 levels"):
        id_maps([[a]], 4, 6)
    with pytest.raises(ValueError, match="more than the 4 levels"):
        id_maps([[a]] * 5, 4, 6)


def test_save_features_round_trip_and_refusals(tmp_path):
    assert LEVELS == ("default", "s", "m", "l")
    a = np.zeros((4, 6), bool); a[1:3, 2:5] = True
    seg, counts = id_maps([[a], [], [a], [a]], 4, 6)
    feats = np.eye(3, 8, dtype=np.float64)                     # converted to float32 on write
    s_path, f_path = save_features(tmp_path / "language_features", "frame_00001", seg, feats)
    assert np.load(s_path).dtype == np.float32 and np.load(f_path).dtype == np.float32
    cam = camera("frame_00001")
    check_folder(tmp_path, [cam], level=3)
    assert torch.equal(load_seg(tmp_path, cam, 2), torch.from_numpy(np.where(a, 1, -1)))
    assert torch.equal(load_clip(tmp_path, cam), torch.eye(3, 8))
    out = tmp_path / "bad"
    for bad_seg, bad_f, says in [(seg[:3], feats, "expected a \\[4, H, W\\] id map"),
                                 (seg, feats[:2], "ids must be -1 or rows of the 2-row"),
                                 (seg + 0.5, feats, "ids must be"),
                                 (seg, np.full((3, 8), np.nan), "NaN or inf"),
                                 (seg, feats[0], "expected \\[masks, channels\\]")]:
        with pytest.raises(ValueError, match=says):
            save_features(out, "x", bad_seg, bad_f)
    assert not out.exists() or not list(out.iterdir())       # nothing written, no temp file left
    empty, _ = id_maps([[], [], [], []], 4, 6)                # a view without masks: all -1, [0, C]
    save_features(out, "none", empty, np.zeros((0, 512), np.float32))
    assert np.all(np.load(out / "none_s.npy") == -1) and np.load(out / "none_f.npy").shape == (0, 512)
