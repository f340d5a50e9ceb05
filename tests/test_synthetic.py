"""Synthetic LERF-OVS-shaped scenes: determinism, file formats, ground truth vs. the ray caster,
COLMAP geometry, label polygons, ray-caster analytics, bad input. Small sizes (6 views, 64x48)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocess.synthetic import SceneExistsError, build_scene, generate_scene, make_config
from preprocess.synthetic.__main__ import main as cli_main
from preprocess.synthetic.generate import label_frame_indices
from preprocess.synthetic.labels import rasterize_polygons
from preprocess.synthetic.layout import REGION_NAMES
from preprocess.synthetic.masks import image_gap_direction, to_image_space
from preprocess.synthetic.raycast import Primitive, camera_rays, cast
from preprocess.synthetic.render import id_buffers
from scene.cameras import intrinsics, look_at
from scene.colmap import qvec2rotmat, read_model
from scene.encoders import HashTextEncoder

SMALL = {"n_views": 6, "width": 64, "height": 48, "n_points": 1500, "n_labelled": 4}


def _gen(root, name="scn", seed=3, preset="default", workers=1, **kw):
    return generate_scene(root, name, seed, preset, dict(SMALL, **kw), progress=False, log=lambda *a: None,
                          workers=workers)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return root, _gen(root)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    return root, _gen(root, preset="clean", seed=5)


def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_deterministic_per_seed(scene, tmp_path):
    root, _ = scene
    _gen(tmp_path / "a", workers=2)   # views rendered in 2 processes, in any order
    a, b = _files(root), _files(tmp_path / "a")
    assert a.keys() == b.keys() and len(a) > 30
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    _gen(tmp_path / "c", seed=4)
    c = _files(tmp_path / "c" / "scn")
    assert c["images/frame_00001.png"] != a["scn/images/frame_00001.png"]
    assert c["sparse/0/points3D.txt"] != a["scn/sparse/0/points3D.txt"]


def test_layout_and_folder_shape(scene):
    root, d = scene
    names = sorted(p.name for p in (d / "images").iterdir())
    assert names == [f"frame_{i:05d}.png" for i in range(1, 7)]
    info = json.loads((d / "synthetic.json").read_text())
    assert info["seed"] == 3 and info["preset"] == "default" and info["config"]["n_views"] == 6
    objs = info["objects"]
    assert len(objs) >= 8 and len(set(objs)) == len(objs)
    words = [w for o in objs for w in o.split()]
    assert any(words.count(w) >= 2 for w in set(words))          # e.g. "red apple" / "green apple"
    q = json.loads((d / "queries.json").read_text())
    assert q["queries"] and set(q["queries"]) <= set(objs)
    assert any(" " in c for c in q["queries"])
    lab = [int(f[6:]) - 1 for f in q["frames"]]
    assert lab == label_frame_indices(3, make_config("default", SMALL)) and 4 <= len(lab) <= 7
    tf = json.loads((d / "text_features.json").read_text())
    assert set(q["queries"]) | {"object", "things", "stuff", "texture"} <= set(tf)
    enc = HashTextEncoder()
    v = np.asarray(tf[q["queries"][0]])
    assert v.shape == (512,) and np.allclose(v, enc.encode_numpy([q["queries"][0]])[0], atol=1e-7)
    img = np.asarray(Image.open(d / "images" / "frame_00001.png"))
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img.std() > 10


def test_language_feature_files(scene):
    _, d = scene
    for i in range(1, 7):
        s = np.load(d / "language_features" / f"frame_{i:05d}_s.npy")
        f = np.load(d / "language_features" / f"frame_{i:05d}_f.npy")
        assert s.dtype == np.float32 and s.shape == (4, 48, 64)
        assert f.dtype == np.float32 and f.ndim == 2 and f.shape[1] == 512
        assert np.all(s == np.round(s)) and s.min() >= -1 and s.max() < f.shape[0]
        assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
        prev_max = -1
        for k in range(4):  # level k ids come after (are offset past) all ids of levels < k
            ids = s[k][s[k] >= 0]
            assert ids.size > 0
            assert ids.min() > prev_max
            prev_max = ids.max()


def test_clean_levels_match_ray_caster(clean):
    """Clean preset: level l is exactly the ray caster's objects (+ background regions), with the
    hash vectors of the object names; -1 only on pieces under the minimum mask area."""
    root, d = clean
    cfg = make_config("clean", SMALL)
    layout, cams = build_scene(5, cfg)
    enc = HashTextEncoder()
    c = cfg.noise.image_text_cos
    name_vec = enc.encode_numpy([o.name for o in layout.objects])
    name_img = to_image_space(name_vec, c)
    min_area = max(int(round(cfg.min_mask_frac * 64 * 48)), 4)
    for vi, cam in enumerate(cams):
        _, obj, part, region = id_buffers(layout, cam)
        s = np.load(d / "language_features" / f"{cam.name}_s.npy")
        f = np.load(d / "language_features" / f"{cam.name}_f.npy")
        l3 = s[3].astype(int)
        expect_unmasked = np.zeros_like(obj, bool)
        for o in range(len(layout.objects)):
            m = obj == o
            if not m.any():
                continue
            if m.sum() < min_area:
                expect_unmasked |= m
                continue
            ids = np.unique(l3[m])
            assert ids.size == 1 and np.array_equal(l3 == ids[0], m)
            assert np.allclose(f[ids[0]], name_img[o], atol=1e-6)
        for r in REGION_NAMES:
            m = region == r
            if 0 < m.sum() < min_area:
                expect_unmasked |= m
            elif m.any():
                assert np.allclose(f[l3[m][0]], to_image_space(enc.encode_numpy([REGION_NAMES[r]])[0], c), atol=1e-6)
        assert np.array_equal(l3 < 0, expect_unmasked)
        # level s: parts carry the object name (plus a part word)
        l1 = s[1].astype(int)
        for o in np.unique(obj[(obj >= 0) & (l1 >= 0)]):
            rows = np.unique(l1[(obj == o) & (l1 >= 0)])
            g = image_gap_direction(f.shape[1])
            text_side = f[rows] - np.outer(f[rows] @ g, g)  # remove the modality-gap component
            text_side /= np.linalg.norm(text_side, axis=1, keepdims=True)
            assert np.all(text_side @ name_vec[o] > 0.7)


def test_gt_masks_equal_ray_caster(scene):
    root, d = scene
    cfg = make_config("default", SMALL)
    layout, cams = build_scene(3, cfg)
    names = [o.name for o in layout.objects]
    q = json.loads((d / "queries.json").read_text())
    min_label = max(int(round(cfg.label_min_frac * 64 * 48)), 20)
    for frame, cats in q["frames"].items():
        cam = cams[int(frame[6:]) - 1]
        _, obj, _, _ = id_buffers(layout, cam)
        visible = [names[o] for o in range(len(names)) if (obj == o).sum() >= min_label]
        assert sorted(cats) == sorted(visible) and len(cats) >= 3
        for c in cats:
            gt = np.asarray(Image.open(root / "label" / "scn" / "gt" / frame / f"{c}.png"))
            assert gt.dtype == np.uint8 and set(np.unique(gt)) <= {0, 255}
            assert np.array_equal(gt == 255, obj == names.index(c))


def test_label_polygons_rasterise_to_gt(scene):
    root, _ = scene
    lab = root / "label" / "scn"
    jsons = sorted(lab.glob("frame_*.json"))
    assert len(jsons) == 4
    for jf in jsons:
        doc = json.loads(jf.read_text())
        assert doc["info"] == {"name": jf.stem + ".png", "width": 64, "height": 48}
        by_cat = {}
        for ob in doc["objects"]:
            poly = np.asarray(ob["segmentation"])
            x1, y1, x2, y2 = ob["bbox"]
            assert poly.shape[1] == 2 and len(poly) >= 3
            assert (x1, y1, x2, y2) == (poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max())
            by_cat.setdefault(ob["category"], []).append(poly)
        for cat, polys in by_cat.items():
            pred = rasterize_polygons(polys, 48, 64)
            gt = np.asarray(Image.open(lab / "gt" / jf.stem / f"{cat}.png")) > 127
            iou = (pred & gt).sum() / (pred | gt).sum()
            assert iou > 0.9, (jf.stem, cat, iou)


def test_colmap_model_projects_points_onto_their_objects(scene):
    _, d = scene
    cfg = make_config("default", SMALL)
    layout, cams = build_scene(3, cfg)
    cameras, images, pts = read_model(d / "sparse" / "0")
    assert len(cameras) == 1 and cameras[1].model == "PINHOLE"
    fx, fy, cx, cy = cameras[1].params
    K = intrinsics(fx, fy, cx, cy)
    assert np.allclose(K, cams[0].K)
    bufs = {}
    for im in images.values():
        cam = cams[im.id - 1]
        assert im.name == f"{cam.name}.png"
        assert np.allclose(qvec2rotmat(im.qvec), cam.R, atol=1e-9) and np.allclose(im.tvec, cam.t)
        _, obj, _, region = id_buffers(layout, cam)
        bufs[im.id] = (qvec2rotmat(im.qvec), im.tvec, np.where(obj >= 0, obj, -region))
    assert 1000 <= len(pts) <= 20000
    inlier = pts.error < 1.0
    assert 0.9 < inlier.mean() < 1.0      # a few % outliers with large reprojection error
    assert np.median(pts.error[~inlier]) > 2.0
    ok = total = 0
    for k in np.flatnonzero(inlier):
        img_ids, p2d = pts.tracks[k]
        assert len(img_ids) >= 2
        labels, near = [], []
        for iid, j in zip(img_ids, p2d):
            R, t, lab = bufs[int(iid)]
            xy = images[int(iid)].xys[j]
            assert images[int(iid)].point3D_ids[j] == pts.ids[k]
            xc = R @ pts.xyz[k] + t
            uv = (K @ xc)[:2] / xc[2]
            assert np.linalg.norm(uv - xy) < 1.0
            u, v = int(uv[0]), int(uv[1])   # the pixel holding the projection and its neighbours
            labels.append(lab[min(max(v, 0), 47), min(max(u, 0), 63)])
            near.append(lab[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2])
        vals, counts = np.unique(labels, return_counts=True)
        own = vals[np.argmax(counts)]   # the point's object (or background region) by majority
        ok += sum(own in n for n in near)
        total += len(near)
    assert total > 2000 and ok / total > 0.98


def test_sphere_silhouette_is_analytic():
    for d, r, f in ((4.0, 0.5, 120.0), (3.0, 1.0, 80.0), (10.0, 0.7, 400.0)):
        W = H = 121
        R, t = look_at((0, -d, 0), (0, 0, 0))
        K = intrinsics(f, f, W / 2, H / 2)
        c, dirs = camera_rays(R, t, K, W, H)
        h = cast([Primitive("ellipsoid", (r, r, r), (0, 0, 0))], c, dirs.reshape(-1, 3))
        m = (h.prim >= 0).reshape(H, W)
        expect = f * r / np.sqrt(d * d - r * r)
        assert abs(m[H // 2].sum() / 2 - expect) <= 1.0
        assert abs(m[:, W // 2].sum() / 2 - expect) <= 1.0
        # hit points lie on the sphere, normals are radial
        hp = h.point[h.prim >= 0]
        assert np.allclose(np.linalg.norm(hp, axis=1), r, atol=1e-9)
        assert np.allclose(h.normal[h.prim >= 0], hp / r, atol=1e-6)


def test_all_primitives_hit_their_surface():
    rng = np.random.default_rng(0)
    shapes = {"box": ((0.4, 0.3, 0.2), lambda x: np.max(np.abs(x) / [0.4, 0.3, 0.2], 1) - 1),
              "frustum": ((0.4, 0.1, 0.6, True), None),
              "capsule": ((0.2, 0.6), lambda x: np.linalg.norm(
                  x - np.stack([0 * x[:, 0], 0 * x[:, 0], np.clip(x[:, 2], -0.3, 0.3)], 1), axis=1) - 0.2),
              "torus": ((0.4, 0.12), lambda x: np.hypot(np.hypot(x[:, 0], x[:, 1]) - 0.4, x[:, 2]) - 0.12)}
    for kind, (params, sdf) in shapes.items():
        o = rng.normal(size=(3000, 3))
        o = 3 * o / np.linalg.norm(o, axis=1, keepdims=True)
        d = -o + rng.normal(scale=0.3, size=o.shape)
        h = cast([Primitive(kind, params, (0, 0, 0))], o, d)
        assert (h.prim >= 0).mean() > 0.2, kind
        p = h.point[h.prim >= 0]
        if sdf is not None:
            assert np.abs(sdf(p)).max() < 1e-6, kind
        else:  # frustum: on the side (r(z) = 0.4 - 0.5 z) or on a cap
            rz = np.hypot(p[:, 0], p[:, 1]) - (0.4 - 0.5 * p[:, 2])
            cap = (np.abs(p[:, 2]) < 1e-9) | (np.abs(p[:, 2] - 0.6) < 1e-9)
            assert np.all(cap | (np.abs(rz) < 1e-9)) and p[:, 2].min() > -1e-9 and p[:, 2].max() < 0.6 + 1e-9


def test_bad_input_and_existing_folders(scene, tmp_path, capsys):
    root, d = scene
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        make_config("nope")
    with pytest.raises(ValueError, match="width must be an integer >= 8"):
        make_config("default", {"width": -5})
    with pytest.raises(ValueError, match="n_views must be"):
        _gen(tmp_path, n_views=0)
    with pytest.raises(ValueError, match="unknown synthetic-scene setting 'bogus'"):
        make_config("default", {"bogus": 1})
    with pytest.raises(ValueError, match="probability"):
        make_config("default", {"noise.miss": 1.5})
    with pytest.raises(ValueError, match="sizes must be finite and >= 0"):
        Primitive("ellipsoid", (-1.0, 1.0, 1.0), (0, 0, 0))
    # same scene -> up to date, nothing rewritten; different scene -> refused unless --force
    mtime = (d / "synthetic.json").stat().st_mtime_ns
    msgs = []
    generate_scene(root, "scn", 3, "default", SMALL, progress=False, log=msgs.append)
    assert "up to date" in msgs[0] and (d / "synthetic.json").stat().st_mtime_ns == mtime
    with pytest.raises(SceneExistsError, match="--force"):
        generate_scene(root, "scn", 4, "default", SMALL, progress=False)
    argv = ["--root", str(root), "--scene", "scn", "--seed", "9", "--views", "6", "--width", "64",
            "--height", "48", "--set", "n_points=300", "--set", "n_labelled=4", "--quiet"]
    assert cli_main(argv) == 2
    assert "already holds a different scene" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a scene")
    with pytest.raises(SceneExistsError):
        _gen(tmp_path, name="other")
    assert cli_main(["--root", str(tmp_path), "--scene", "other", "--views", "6", "--width", "64",
                     "--height", "48", "--set", "n_points=300", "--set", "n_labelled=4", "--quiet",
                     "--force"]) == 0
    assert not (tmp_path / "other" / "notes.txt").exists()
    assert json.loads((tmp_path / "other" / "synthetic.json").read_text())["config"]["n_points"] == 300
    assert cli_main(["--root", str(tmp_path), "--scene", "x", "--width", "-4"]) == 2
    assert "width must be an integer >= 8" in capsys.readouterr().err


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    import preprocess.synthetic.generate as gen

    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    real = gen.render_view
    monkeypatch.setattr(gen, "render_view", boom)
    with pytest.raises(KeyboardInterrupt):
        _gen(tmp_path, name="cut")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("per_view", [False, True])
def test_per_view_noise_decisions(tmp_path, per_view):
    """Level-3 over-segmentation drawn per view (default) or once per object (per_view=False)."""
    kw = {"noise.over_seg": 0.5, "noise.per_view": per_view}
    d = _gen(tmp_path, preset="clean", seed=11, **kw)
    layout, cams = build_scene(11, make_config("clean", dict(SMALL, **kw)))
    name_vec = to_image_space(HashTextEncoder().encode_numpy([o.name for o in layout.objects]),
                              make_config("clean", SMALL).noise.image_text_cos)
    status = {}
    for cam in cams:
        _, obj, _, _ = id_buffers(layout, cam)
        s = np.load(d / "language_features" / f"{cam.name}_s.npy")[3].astype(int)
        f = np.load(d / "language_features" / f"{cam.name}_f.npy")
        for o in range(len(layout.objects)):
            ids = np.unique(s[(obj == o) & (s >= 0)])
            if (obj == o).sum() >= 30 and ids.size:
                whole = bool(np.any(np.abs(f[ids] @ name_vec[o] - 1) < 1e-5))
                status.setdefault(o, set()).add(whole)
    assert len(status) >= 5
    mixed = [o for o, st in status.items() if len(st) == 2]
    assert (len(mixed) > 0) == per_view
