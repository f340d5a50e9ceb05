"""The generated ScanNet-shaped room (``preprocess.synthetic.room``, issue 17): OpenGaussian's ScanNet
layout read back by the project's own loaders (``scene.dataset.load_scene`` -> ``scene.blender``,
``scene.scannet``, ``scene.language_features``), vertex labels against the room's geometry, masks and
vectors against the ray caster's id buffers, determinism and the overwrite rules. A tiny room: 8
views at 48x36, 1500 vertices (well under a second to generate)."""
import json

import numpy as np
import pytest
from PIL import Image

from preprocess.synthetic import SceneExistsError
from preprocess.synthetic.render import id_buffers
from preprocess.synthetic.room import build_room, generate_room, main as room_main, make_room_config
from preprocess.synthetic.room_layout import nyu40_buffer
from scene.blender import read_points_ply
from scene.dataset import load_scene
from scene.encoders import HashTextEncoder
from scene.grounding import CANONICAL_NEGATIVES
from scene.language_features import LEVEL_INDEX, check_folder
from scene.provenance import resolve_text_encoder
from scene.scannet import NYU40_NAMES, SUBSETS, evaluate_scenes, labels_path, read_points, read_vertex_labels

NAME = "scene0000_00"
SMALL = {"n_views": 8, "width": 48, "height": 36, "n_points": 1500}
PLACED = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 24}  # wall, floor and the furniture of room_layout.PLAN
NYU40_ID = {v: k for k, v in NYU40_NAMES.items()}


def _gen(root, seed=0, preset="default", name=NAME, **kw):
    return generate_room(root, name, seed, preset, dict(SMALL, **kw), progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    return _gen(tmp_path_factory.mktemp("room"))


@pytest.fixture(scope="module")
def clean_room(tmp_path_factory):
    return _gen(tmp_path_factory.mktemp("room_clean"), preset="clean")


def _truth(scene_dir):
    """(layout, cameras, room size, config) of a generated room, rebuilt from its synthetic.json."""
    meta = json.loads((scene_dir / "synthetic.json").read_text())
    conf = dict(meta["config"])
    over = {**{k: v for k, v in conf.items() if k != "noise"}, **{f"noise.{k}": v for k, v in conf["noise"].items()}}
    cfg = make_room_config(meta["preset"], over)
    return (*build_room(meta["seed"], cfg), cfg)


def test_files_present_and_readable(room):
    frames = [str(i) for i in range(SMALL["n_views"])]
    for i in frames:
        with Image.open(room / "color" / f"{i}.png") as im:
            assert im.size == (SMALL["width"], SMALL["height"]) and im.mode == "RGB"
    train = json.loads((room / "transforms_train.json").read_text())
    test = json.loads((room / "transforms_test.json").read_text())
    for meta in (train, test):
        assert {"fl_x", "fl_y", "cx", "cy", "w", "h", "frames"} <= set(meta)
    assert [f["file_path"] for f in test["frames"]] == ["color/0.png"]           # every 8th frame
    assert len(train["frames"]) == 7
    data = load_scene(room, holdout_offset=0)
    check_folder(room, data.train_cameras + data.test_cameras, level=LEVEL_INDEX["l"])
    for i in frames:
        f = np.load(room / "language_features" / f"{i}_f.npy")
        assert f.dtype == np.float32 and f.shape[1] == 512
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
        assert np.load(room / "language_features" / f"{i}_s.npy").shape == (4, SMALL["height"], SMALL["width"])
    meta = json.loads((room / "synthetic.json").read_text())
    assert meta["complete"] and meta["text_space"]["encoder"] == "hash"
    # the query encoder the project picks for the scene, and the phrase table
    res = resolve_text_encoder("auto", room)
    assert res["encoder"] == "hash" and res["dim"] == 512
    table = json.loads((room / "text_features.json").read_text())
    assert set(NYU40_NAMES.values()) | set(CANONICAL_NEGATIVES) <= set(table)
    np.testing.assert_allclose(table["bookshelf"], HashTextEncoder().encode_numpy(["bookshelf"])[0], atol=1e-7)


def test_cameras_load_and_project_where_the_caster_saw(room):
    data = load_scene(room, holdout_offset=0)
    assert len(data.train_cameras) == 7 and [c.image_name for c in data.test_cameras] == ["0"]
    layout, cams, _, _ = _truth(room)
    by_name = {c.image_name: c for c in data.train_cameras + data.test_cameras}
    for cam in cams:
        lc = by_name[cam.name]
        assert (lc.width, lc.height) == (cam.width, cam.height)
        hits = id_buffers(layout, cam)[0]
        X = hits.point.reshape(cam.height, cam.width, 3)
        ys, xs = np.mgrid[0:cam.height:5, 0:cam.width:7]
        P = X[ys.ravel(), xs.ravel()]
        ok = np.isfinite(P[:, 0])
        xc = P[ok] @ lc.R.T + lc.t
        uv = (xc[:, :2] / xc[:, 2:]) @ np.diag([lc.K[0, 0], lc.K[1, 1]]) + lc.K[:2, 2]
        np.testing.assert_allclose(uv, np.stack([xs.ravel(), ys.ravel()], 1)[ok] + 0.5, atol=1e-6)
    # the Blender loader's points are the PLY's vertices
    xyz, _ = read_points_ply(room / "points3d.ply")
    np.testing.assert_array_equal(data.points_xyz, xyz)


def test_labels_ply_matches_points_and_classes(room):
    ply = labels_path(room, NAME)
    xyz, rgb = read_points_ply(room / "points3d.ply")
    assert len(xyz) == SMALL["n_points"]
    np.testing.assert_array_equal(read_points(ply), xyz)
    np.testing.assert_array_equal(read_points_ply(ply)[1], rgb)
    lab = read_vertex_labels(ply)
    present = set(np.unique(lab).tolist())
    assert present <= PLACED and {1, 2, 4, 5, 6, 7} <= present
    inter = {s: present & set(SUBSETS[s]) for s in SUBSETS}
    assert all(inter.values()) and inter[19] != inter[15]
    # the protocol runs on it: the ground truth as prediction scores 100 on every subset
    res = evaluate_scenes({NAME: (lab, lab, None)})
    assert all(abs(res["mean"][s]["mIoU"] - 100) < 1e-9 for s in (19, 15, 10))


def _on_box(X, prim, tol=1e-6):
    """bool [P]: the points lie on the surface of a box primitive."""
    q = np.abs((X - prim.center) @ prim.rot)
    h = np.asarray(prim.params[:3])
    return np.all(q <= h + tol, axis=1) & np.any(np.abs(q - h) <= tol, axis=1)


def test_vertex_label_is_the_class_of_its_surface(room):
    layout, _, (W, D), _ = _truth(room)
    xyz = read_points(labels_path(room, NAME)).astype(np.float64)
    lab = read_vertex_labels(labels_path(room, NAME))
    floor = lab == 2
    np.testing.assert_allclose(xyz[floor, 2], 0.0, atol=1e-6)
    wall = xyz[lab == 1]
    on_wall = (np.isclose(np.abs(wall[:, 0]), W / 2, atol=1e-5) | np.isclose(np.abs(wall[:, 1]), D / 2, atol=1e-5))
    assert on_wall.all() and (wall[:, 2] > 0).all()
    furn = np.flatnonzero((lab != 1) & (lab != 2))
    assert furn.size > 100
    classes = {o: NYU40_ID[layout.objects[o].name] for o in range(len(layout.objects))}
    own = np.zeros(furn.size, bool)
    for p in layout.prims:
        if p.obj >= 0:
            own |= _on_box(xyz[furn], p, tol=2e-5) & (lab[furn] == classes[p.obj])
    assert own.all(), f"{(~own).sum()} furniture vertices are not on a box of their class"


def test_clean_masks_follow_the_ground_truth_and_vectors_rank_their_class(clean_room):
    layout, cams, _, cfg = _truth(clean_room)
    names = [NYU40_NAMES[c] for c in SUBSETS[19]]
    text = HashTextEncoder().encode_numpy(names)
    n_masks = 0
    for cam in cams:
        _, obj, _, region = id_buffers(layout, cam)
        key = np.where(obj >= 0, obj, -region)          # one value per object / background region
        nyu = nyu40_buffer(layout, obj, region)
        s = np.load(clean_room / "language_features" / f"{cam.name}_s.npy").astype(np.int64)
        f = np.load(clean_room / "language_features" / f"{cam.name}_f.npy")
        best = np.argmax(f @ text.T, axis=1)
        l3 = s[LEVEL_INDEX["l"]]
        for m in np.unique(l3[l3 >= 0]):                # a level-3 mask is one whole object / region
            owners = np.unique(key[l3 == m])
            assert owners.size == 1
            if owners[0] >= 0:
                np.testing.assert_array_equal(l3 == m, obj == owners[0])
        for lv in range(s.shape[0]):                    # every mask of every level: within one thing,
            for m in np.unique(s[lv][s[lv] >= 0]):      # its vector closest to that thing's class text
                cls = np.unique(nyu[s[lv] == m])
                assert cls.size == 1
                if cls[0] > 0:                           # (0: the sky above the walls)
                    assert names[best[m]] == NYU40_NAMES[int(cls[0])]
                    n_masks += 1
    assert n_masks > 50


def test_default_noise_vectors_mostly_rank_their_class(room):
    layout, cams, _, _ = _truth(room)
    names = [NYU40_NAMES[c] for c in SUBSETS[19]]
    text = HashTextEncoder().encode_numpy(names)
    right = total = 0
    for cam in cams:
        _, obj, _, region = id_buffers(layout, cam)
        nyu = nyu40_buffer(layout, obj, region)
        s = np.load(room / "language_features" / f"{cam.name}_s.npy").astype(np.int64)[LEVEL_INDEX["l"]]
        f = np.load(room / "language_features" / f"{cam.name}_f.npy")
        for m in np.unique(s[s >= 0]):
            vals, counts = np.unique(nyu[s == m], return_counts=True)
            cls = int(vals[np.argmax(counts)])
            if cls > 0:
                total += 1
                right += names[int(np.argmax(f[m] @ text.T))] == NYU40_NAMES[cls]
    assert total > 30 and right / total > 0.6   # noisy (confusion, misleading backgrounds), not random


def test_deterministic(room, tmp_path):
    again = _gen(tmp_path / "a")
    files = sorted(p.relative_to(room) for p in room.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (room / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = _gen(tmp_path / "b", seed=1)
    assert (other / "points3d.ply").read_bytes() != (room / "points3d.ply").read_bytes()


def test_up_to_date_refuse_and_force(tmp_path):
    d = _gen(tmp_path, n_views=4, n_points=400)
    stamp = (d / "points3d.ply").stat().st_mtime_ns
    logs = []
    generate_room(tmp_path, NAME, 0, "default", dict(SMALL, n_views=4, n_points=400), progress=False, log=logs.append)
    assert "up to date" in logs[0] and (d / "points3d.ply").stat().st_mtime_ns == stamp
    with pytest.raises(SceneExistsError):
        _gen(tmp_path, seed=5, n_views=4, n_points=400)
    generate_room(tmp_path, NAME, 5, "default", dict(SMALL, n_views=4, n_points=400), force=True,
                  progress=False, log=lambda *a: None)
    assert json.loads((d / "synthetic.json").read_text())["seed"] == 5
    foreign = tmp_path / "scene0001_00"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SceneExistsError):
        _gen(tmp_path, name="scene0001_00", n_views=4, n_points=400)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown room setting"):
        make_room_config("default", {"n_objects": 3})


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        room_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--root", "--scene", "--seed", "--views", "--width", "--height", "--points", "--preset",
                 "--set", "--force", "--quiet"):
        assert flag in out
    args = ["--root", str(tmp_path), "--views", "3", "--width", "32", "--height", "24", "--points", "200", "--quiet"]
    assert room_main(args) == 0
    assert (tmp_path / NAME / f"{NAME}_vh_clean_2.labels.ply").is_file()
    assert room_main(args + ["--seed", "2"]) == 2                       # another scene there: refused
    assert "--force" in capsys.readouterr().err
    assert room_main(args + ["--set", "noise.bogus=1"]) == 2
