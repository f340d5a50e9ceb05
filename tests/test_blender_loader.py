"""scene/blender.py: a scene written both as a COLMAP model and as transforms_*.json loads to the same
cameras; intrinsics styles, file_path forms, the split, points3d.ply, and the error messages."""
import json
import math

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData, PlyElement

from scene.blender import load_blender_scene, read_transforms
from scene.cameras import intrinsics, look_at
from scene.colmap import ColmapCamera, ColmapImage, ColmapPoints, rotmat2qvec, write_model
from scene.dataset import load_scene
from scene.views import nerfpp_radius

W, H = 40, 30
NAMES = [f"frame_{i:05d}" for i in (3, 1, 6, 2, 5, 4)]  # file order is not the sorted order


def _ring(n=6, radius=3.0):
    """(R, t) world-to-camera, OpenCV axes, of n cameras on a ring looking at the origin."""
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n
        out.append(look_at([radius * np.cos(a), radius * np.sin(a), 0.5 * np.sin(2 * a)], np.zeros(3)))
    return out


def _c2w_opengl(R, t):
    """Camera-to-world in OpenGL/Blender axes, built from the camera's axes: OpenCV x right, y down,
    z forward are the rows of R; OpenGL keeps x and points y up and z backwards."""
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = R[0], -R[1], -R[2]
    c2w[:3, 3] = -R.T @ t
    return c2w


def _points(n=25, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.5, (n, 3)), rng.integers(0, 256, (n, 3)).astype(np.uint8)


def _write_ply(path, xyz, rgb=None, faces=False):
    dt = [("x", "f4"), ("y", "f4"), ("z", "f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")]
                                                    if rgb is not None else [])
    v = np.zeros(len(xyz), dtype=dt)
    v["x"], v["y"], v["z"] = xyz.T
    if rgb is not None:
        v["red"], v["green"], v["blue"] = rgb.T
    els = [PlyElement.describe(v, "vertex")]
    if faces:  # a mesh, as ScanNet's points3d.ply
        f = np.zeros(2, dtype=[("vertex_indices", "i4", (3,))])
        f["vertex_indices"] = [[0, 1, 2], [1, 2, 3]]
        els.append(PlyElement.describe(f, "face"))
    PlyData(els).write(str(path))


def _write_both(root, K, style="fl", calib=(W, H), test=(), ext_every=2):
    """Writes images (W x H PNGs), a COLMAP text model and transforms_{train,test}.json of the same
    cameras into root/colmap and root/blender; K is at the calibration size ``calib``."""
    poses, (xyz, rgb) = _ring(len(NAMES)), _points()
    cc, cb = root / "colmap", root / "blender"
    for d in (cc / "images", cb / "color"):
        d.mkdir(parents=True)
        for n in NAMES:
            Image.new("RGB", (W, H), (10, 20, 30)).save(d / f"{n}.png")
    cams = {1: ColmapCamera(1, "PINHOLE", calib[0], calib[1], np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]))}
    imgs = {i + 1: ColmapImage(i + 1, rotmat2qvec(R), t, 1, f"{n}.png", np.zeros((0, 2)), np.zeros(0, np.int64))
            for i, (n, (R, t)) in enumerate(zip(NAMES, poses))}
    write_model(cc / "sparse" / "0", cams, imgs, ColmapPoints(np.arange(1, len(xyz) + 1), xyz, rgb,
                                                              np.zeros(len(xyz))), ext=".txt")
    if style == "fl":
        head = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": calib[0], "h": calib[1]}
    else:  # the NeRF synthetic style: horizontal FOV only, centred principal point, square pixels
        head = {"camera_angle_x": 2 * math.atan(0.5 * calib[0] / K[0, 0])}
    frames = {"train": [], "test": []}
    for i, (n, (R, t)) in enumerate(zip(NAMES, poses)):
        fp = f"./color/{n}" if i % ext_every else f"color/{n}.png"
        frames["test" if n in test else "train"].append({"file_path": fp, "transform_matrix":
                                                         _c2w_opengl(R, t).tolist()})
    for split, fr in frames.items():
        if fr or split == "train":
            (cb / f"transforms_{split}.json").write_text(json.dumps({**head, "frames": fr}))
    _write_ply(cb / "points3d.ply", xyz, rgb, faces=True)
    return cc, cb


def _same_cameras(a, b):
    assert [c.image_name for c in a] == [c.image_name for c in b]
    for x, y in zip(a, b):
        assert (x.uid, x.width, x.height, x.image_path.name) == (y.uid, y.width, y.height, y.image_path.name)
        np.testing.assert_allclose(x.R, y.R, atol=1e-6)
        np.testing.assert_allclose(x.t, y.t, atol=1e-6)
        np.testing.assert_allclose(x.K, y.K, atol=1e-6)


@pytest.mark.parametrize("style", ["fl", "angle"])
def test_same_cameras_as_colmap(tmp_path, style):
    K = intrinsics(37.5, 41.0, 19.25, 16.5) if style == "fl" else intrinsics(36.0, 36.0, W / 2, H / 2)
    cc, cb = _write_both(tmp_path, K, style)
    a, b = load_scene(cc), load_scene(cb)                     # load_scene hands cb to load_blender_scene
    _same_cameras(a.all_cameras, b.all_cameras)
    assert [c.image_name for c in b.train_cameras] == sorted(NAMES) and b.test_cameras == []
    assert b.all_cameras[0].image_path == cb / "color" / "frame_00001.png"
    np.testing.assert_allclose(b.points_xyz, a.points_xyz, atol=1e-6)
    np.testing.assert_allclose(b.points_rgb, a.points_rgb, atol=1e-7)
    assert b.points_xyz.dtype == np.float32 and b.points_rgb.dtype == np.float32
    assert b.cameras_extent == pytest.approx(a.cameras_extent)
    for r in (2, 25):                                          # and after the resolution rule
        _same_cameras(load_scene(cc, resolution=r).all_cameras, load_scene(cb, resolution=r).all_cameras)


def test_calibration_size_differs_from_file(tmp_path):
    """w, h name the calibration size: K is scaled to the image file, as COLMAP's camera size is."""
    cc, cb = _write_both(tmp_path, intrinsics(75.0, 82.0, 38.5, 33.0), "fl", calib=(2 * W, 2 * H))
    a, b = load_scene(cc).all_cameras, load_scene(cb).all_cameras
    _same_cameras(a, b)
    np.testing.assert_allclose(b[0].K, intrinsics(37.5, 41.0, 19.25, 16.5))
    assert (b[0].width, b[0].height) == (W, H)


def test_projection_by_hand(tmp_path):
    """Identity c2w in OpenGL axes: the camera at the origin looks along -z, with +y up in the image."""
    Image.new("RGB", (W, H)).save(tmp_path / "v.png")
    (tmp_path / "transforms_train.json").write_text(json.dumps(
        {"fl_x": 20.0, "fl_y": 20.0, "cx": 20.0, "cy": 15.0, "frames": [{"file_path": "v", "transform_matrix":
                                                                          np.eye(4).tolist()}]}))
    (cam,) = load_blender_scene(tmp_path).train_cameras
    xc = cam.R @ np.array([1.0, 1.0, -2.0]) + cam.t            # right of, above and in front of the camera
    np.testing.assert_allclose(xc, [1.0, -1.0, 2.0])
    uvw = cam.K @ xc
    np.testing.assert_allclose(uvw[:2] / uvw[2], [30.0, 5.0])  # u > cx, v < cy
    assert (cam.uid, cam.image_name, cam.image_path.name) == (0, "v", "v.png")


def test_test_split(tmp_path):
    K = intrinsics(37.5, 41.0, 19.25, 16.5)
    cc, cb = _write_both(tmp_path, K, "fl", test=("frame_00002", "frame_00005"), ext_every=3)
    assert (cb / "transforms_test.json").is_file()
    col = load_scene(cc).all_cameras
    sc = load_scene(cb, holdout_offset=2)                      # any offset: the format's own split
    assert [c.image_name for c in sc.test_cameras] == ["frame_00002", "frame_00005"]
    assert [c.image_name for c in sc.train_cameras] == ["frame_00001", "frame_00003", "frame_00004", "frame_00006"]
    _same_cameras(col, sc.all_cameras)                         # uids: sorted over train and test together
    assert [c.uid for c in sc.test_cameras] == [1, 4]
    assert sc.cameras_extent == pytest.approx(nerfpp_radius(np.array([c.center for c in sc.train_cameras])))
    every = load_scene(cb)                                     # no holdout: every view is a training view
    assert every.test_cameras == [] and [c.image_name for c in every.train_cameras] == sorted(NAMES)
    _same_cameras(col, every.train_cameras)
    assert load_blender_scene(cb, use_test_split=False).test_cameras == []


def test_points_ply(tmp_path, capsys):
    K = intrinsics(36.0, 36.0, W / 2, H / 2)
    _, cb = _write_both(tmp_path, K, "angle")
    xyz, _ = _points()
    _write_ply(cb / "points3d.ply", xyz)                       # no colours: grey
    sc = load_blender_scene(cb)
    np.testing.assert_allclose(sc.points_xyz, xyz, atol=1e-6)
    np.testing.assert_array_equal(sc.points_rgb, np.full((len(xyz), 3), 0.5, np.float32))
    (cb / "points3d.ply").unlink()                             # none: an empty cloud and a warning
    capsys.readouterr()
    sc = load_blender_scene(cb)
    assert sc.points_xyz.shape == (0, 3) and sc.points_rgb.shape == (0, 3)
    assert "points3d.ply not found" in capsys.readouterr().err
    (cb / "points3d.ply").write_text("not a ply\n")
    with pytest.raises(ValueError) as e:
        load_blender_scene(cb)
    assert str(e.value).startswith(str(cb / "points3d.ply"))


def test_per_frame_intrinsics(tmp_path):
    """A frame's own intrinsic keys win over the top-level ones."""
    for n in ("a", "b"):
        Image.new("RGB", (W, H)).save(tmp_path / f"{n}.png")
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 1.0, "frames": [
        {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()},
        {"file_path": "b", "transform_matrix": np.eye(4).tolist(),
         "fl_x": 30.0, "fl_y": 31.0, "cx": 19.0, "cy": 14.0}]}))
    a, b = load_blender_scene(tmp_path).train_cameras
    f = 0.5 * W / math.tan(0.5)
    np.testing.assert_allclose(a.K, intrinsics(f, f, W / 2, H / 2))
    np.testing.assert_allclose(b.K, intrinsics(30.0, 31.0, 19.0, 14.0))


def _raises_at(path, exc, match, fn, *args):
    with pytest.raises(exc, match=match) as e:
        fn(*args)
    msg = str(e.value)
    assert msg.startswith(str(path)) and len(msg.splitlines()) == 1, msg


def test_errors(tmp_path):
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    f = tmp_path / "transforms_train.json"
    eye = np.eye(4).tolist()

    def write(meta):
        f.write_text(meta if isinstance(meta, str) else json.dumps(meta))

    _raises_at(f, FileNotFoundError, "transforms file not found", read_transforms, f)
    _raises_at(f, FileNotFoundError, "transforms file not found", load_blender_scene, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises_at(empty / "sparse" / "0", FileNotFoundError, "transforms_train.json.*neither a COLMAP scene nor a "
               "Blender/NeRF one", load_scene, empty)
    write('{"frames": [')
    _raises_at(f, ValueError, "not valid JSON", read_transforms, f)
    write({"camera_angle_x": 1.0, "frames": []})
    _raises_at(f, ValueError, "no frames", read_transforms, f)
    write({"camera_angle_x": 1.0})
    _raises_at(f, ValueError, "no frames", load_scene, tmp_path)
    write({"camera_angle_x": 1.0, "frames": [{"file_path": "a.png"}]})
    _raises_at(f, ValueError, r"frame 0 \('a.png'\) has no 'transform_matrix'", read_transforms, f)
    write({"camera_angle_x": 1.0, "frames": [{"transform_matrix": eye}]})
    _raises_at(f, ValueError, "frame 0 has no 'file_path'", read_transforms, f)
    write({"camera_angle_x": 1.0, "frames": [{"file_path": "a.png", "transform_matrix": eye[:3]}]})
    _raises_at(f, ValueError, "must be a 4x4 matrix of finite numbers", read_transforms, f)
    write('{"camera_angle_x": 1.0, "frames": [{"file_path": "a.png", "transform_matrix": '
          '[[NaN,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}]}')
    _raises_at(f, ValueError, "must be a 4x4 matrix of finite numbers", read_transforms, f)
    write({"camera_angle_x": 1.0, "frames": [{"file_path": "a.png", "transform_matrix": eye},
                                             {"file_path": "./color/b", "transform_matrix": eye}]})
    _raises_at(f, FileNotFoundError, r"frame 1: image .*color/b not found", read_transforms, f)
    write({"frames": [{"file_path": "a.png", "transform_matrix": eye}]})
    _raises_at(f, ValueError, r"frame 0 \(a.png\): no intrinsics", load_blender_scene, tmp_path)
    write({"camera_angle_x": 4.0, "frames": [{"file_path": "a.png", "transform_matrix": eye}]})
    _raises_at(f, ValueError, r"camera_angle_x 4.0 must be in \(0, pi\)", load_blender_scene, tmp_path)
    write({"fl_x": 20, "k1": 0.1, "frames": [{"file_path": "a.png", "transform_matrix": eye}]})
    _raises_at(f, ValueError, "non-zero distortion", read_transforms, f)
    Image.new("RGB", (W, H)).save(tmp_path / "a.jpg")
    write({"fl_x": 20, "frames": [{"file_path": "a", "transform_matrix": eye}]})
    _raises_at(f, ValueError, "matches several images", read_transforms, f)
    write({"fl_x": 20, "frames": [{"file_path": "a.png", "transform_matrix": eye},
                                  {"file_path": "a.jpg", "transform_matrix": eye}]})
    _raises_at(f, ValueError, r"frame 0 \(a.png\) has the same image_name 'a' as frame 1 of "
               r"transforms_train.json \(a.jpg\)", load_blender_scene, tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3)).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")
    (tmp_path / "a.png").write_bytes((tmp_path / "a.png").read_bytes()[:1000])  # truncated image
    write({"fl_x": 20, "frames": [{"file_path": "a.png", "transform_matrix": eye}]})
    _raises_at(tmp_path / "a.png", ValueError, "truncated or corrupt", load_blender_scene, tmp_path)


def test_run_dir_fingerprints_a_blender_scene(tmp_path):
    """The run directory identifies a Blender scene by its transforms and points (scene/rundir.py)."""
    from scene.rundir import scene_fingerprint

    _, cb = _write_both(tmp_path, intrinsics(36.0, 36.0, W / 2, H / 2), test=(NAMES[1],))
    fp = scene_fingerprint(cb)
    assert sorted(fp) == ["points3d.ply", "transforms_test.json", "transforms_train.json"]
    before = fp["transforms_train.json"]["sha256"]
    (cb / "transforms_train.json").write_text((cb / "transforms_train.json").read_text() + " ")
    assert scene_fingerprint(cb)["transforms_train.json"]["sha256"] != before
