"""load_scene: camera convention, intrinsics/resolution rules, splits, and its error messages."""
import numpy as np
import pytest
from PIL import Image

from scene.colmap import ColmapCamera, ColmapImage, ColmapPoints, write_model
from scene.dataset import load_scene

S = np.sqrt(0.5)


def _img(name, iid, qvec=(1, 0, 0, 0), tvec=(0, 0, 0), cid=1, xys=None, ids=None):
    xys = np.zeros((0, 2)) if xys is None else np.asarray(xys, dtype=np.float64)
    ids = np.full(len(xys), -1, np.int64) if ids is None else np.asarray(ids, np.int64)
    return ColmapImage(iid, np.asarray(qvec, float), np.asarray(tvec, float), cid, name, xys, ids)


def _scene(root, cams, imgs, pts=None, ext=".txt", file_size=None, skip=()):
    """Writes sparse/0 and blank image files (size = COLMAP size unless file_size is given)."""
    write_model(root / "sparse" / "0", cams, imgs, pts, ext=ext)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for im in imgs.values():
        base = im.name.split("/")[-1]
        if base in skip:
            continue
        c = cams[im.camera_id]
        Image.new("RGB", file_size or (c.width, c.height)).save(root / "images" / base)
    return root


def _pinhole(w=200, h=100, params=(100.0, 120.0, 100.0, 50.0), model="PINHOLE", cid=1):
    return {cid: ColmapCamera(cid, model, w, h, np.asarray(params, float))}


def test_projection_convention(tmp_path):
    """A world point projected with K (R X + t) lands on the pixel stored for it in images.

    Pose by hand: R = 90 deg about z = [[0,-1,0],[1,0,0],[0,0,1]], t = (1,-1,2).
    X = (2,-1,3): R X = (1,2,3), + t = (2,1,5); u = 100*2/5 + 64 = 104, v = 120*1/5 + 48 = 72."""
    cams = _pinhole(128, 96, (100.0, 120.0, 64.0, 48.0))
    imgs = {1: _img("view.png", 1, (S, 0, 0, S), (1, -1, 2), xys=[[104.0, 72.0]], ids=[5])}
    pts = ColmapPoints(np.array([5]), np.array([[2.0, -1.0, 3.0]]), np.array([[255, 0, 51]], np.uint8),
                       np.zeros(1), None)
    sc = load_scene(_scene(tmp_path, cams, imgs, pts))
    (cam,) = sc.train_cameras
    X = sc.points_xyz[0].astype(np.float64)
    xc = cam.R @ X + cam.t
    np.testing.assert_allclose(xc, [2, 1, 5], atol=1e-12)
    uvw = cam.K @ xc
    np.testing.assert_allclose(uvw[:2] / uvw[2], [104.0, 72.0], atol=1e-12)
    np.testing.assert_allclose(cam.center, -cam.R.T @ np.array([1, -1, 2.0]))
    np.testing.assert_allclose(sc.points_rgb, [[1.0, 0.0, 0.2]], atol=1e-7)
    assert sc.points_xyz.dtype == np.float32 and sc.points_rgb.dtype == np.float32
    assert (cam.uid, cam.image_name, cam.width, cam.height) == (0, "view", 128, 96)
    assert cam.image_path == tmp_path / "images" / "view.png"


def test_bin_and_txt_give_identical_cameras(tmp_path):
    rng = np.random.default_rng(0)
    cams = _pinhole(64, 48, (50.123456789, 51.1, 32.25, 23.75))
    imgs = {}
    for i in range(5):
        q = rng.normal(size=4)
        imgs[10 - i] = _img(f"f{i}.jpg", 10 - i, q / np.linalg.norm(q), rng.normal(size=3))
    pts = ColmapPoints(np.arange(4), rng.normal(size=(4, 3)), rng.integers(0, 256, (4, 3)).astype(np.uint8),
                       np.zeros(4), None)
    a = load_scene(_scene(tmp_path / "a", cams, imgs, pts, ".txt"), holdout_offset=1)
    b = load_scene(_scene(tmp_path / "b", cams, imgs, pts, ".bin"), holdout_offset=1)
    assert len(a.all_cameras) == 5
    for ca, cb in zip(a.all_cameras, b.all_cameras):
        assert (ca.uid, ca.image_name, ca.width, ca.height, ca.extra) == (cb.uid, cb.image_name, cb.width,
                                                                           cb.height, cb.extra)
        for f in ("R", "t", "K"):
            np.testing.assert_array_equal(getattr(ca, f), getattr(cb, f))
        assert ca.image_path.name == cb.image_path.name
    np.testing.assert_array_equal(a.points_xyz, b.points_xyz)
    assert a.cameras_extent == b.cameras_extent


def test_split_offsets_and_sorting(tmp_path):
    names = [f"frame_{i:05d}.jpg" for i in range(10)]
    ids = np.random.default_rng(1).permutation(10) + 1          # ids not in name order
    imgs = {int(i): _img(n, int(i)) for i, n in zip(ids, names)}
    root = _scene(tmp_path, _pinhole(), imgs)
    sc = load_scene(root)
    assert sc.test_cameras == []
    assert [c.image_name for c in sc.train_cameras] == [n[:-4] for n in names]
    assert [c.uid for c in sc.all_cameras] == list(range(10))
    s0 = load_scene(root, holdout_offset=0)                     # 3DGS
    assert [c.image_name for c in s0.test_cameras] == ["frame_00000", "frame_00008"]
    assert len(s0.train_cameras) == 8
    s2 = load_scene(root, holdout_offset=2)                     # COS3D stage 1
    assert [c.image_name for c in s2.test_cameras] == ["frame_00002"]
    assert [c.uid for c in s2.train_cameras] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert [c.image_name for c in s2.all_cameras] == [n[:-4] for n in names]
    with pytest.raises(ValueError, match="holdout_offset"):
        load_scene(root, holdout_offset=8)


def test_names_paths_extent_and_empty_points(tmp_path):
    # centres at (+-1, 0, 0) and (0, 3, 0): mean (0, 1, 0); max distance 2 -> extent 2.2
    imgs = {1: _img("sub/a.b.jpg", 1, tvec=(-1, 0, 0)), 2: _img("c.png", 2, tvec=(1, 0, 0)),
            3: _img("d.png", 3, tvec=(0, -3, 0))}
    sc = load_scene(_scene(tmp_path, _pinhole(), imgs))
    assert [c.image_name for c in sc.all_cameras] == ["a", "c", "d"]   # sorted by image_name, as 3DGS
    c = sc.all_cameras[0]
    assert (c.image_name, c.image_path) == ("a", tmp_path / "images" / "a.b.jpg")
    assert sc.cameras_extent == pytest.approx(2.2)
    assert sc.points_xyz.shape == (0, 3) and sc.points_rgb.shape == (0, 3)


def test_resolution_rules(tmp_path, capsys):
    cams = _pinhole(2000, 1500, (1000.0, 1100.0, 1000.0, 750.0))
    root = _scene(tmp_path, cams, {1: _img("a.png", 1), 2: _img("b.png", 2)})
    c = load_scene(root).all_cameras[0]                         # -1: 2000 wide -> 1600 wide
    assert (c.width, c.height) == (1600, 1200)
    np.testing.assert_allclose(c.K, [[800, 0, 800], [0, 880, 600], [0, 0, 1]])
    assert capsys.readouterr().out.count("downscaled to 1600") == 1   # one note for two cameras
    c = load_scene(root, resolution=2).all_cameras[0]
    assert (c.width, c.height) == (1000, 750)
    np.testing.assert_allclose(c.K, [[500, 0, 500], [0, 550, 375], [0, 0, 1]])
    c = load_scene(root, resolution=1).all_cameras[0]
    assert (c.width, c.height) == (2000, 1500)
    np.testing.assert_allclose(c.K, [[1000, 0, 1000], [0, 1100, 750], [0, 0, 1]])
    c = load_scene(root, resolution=500).all_cameras[0]         # a target width
    assert (c.width, c.height) == (500, 375)
    np.testing.assert_allclose(c.K, [[250, 0, 250], [0, 275, 187.5], [0, 0, 1]])
    c = load_scene(root, resolution=-1, max_width=4000).all_cameras[0]
    assert (c.width, c.height) == (2000, 1500)
    with pytest.raises(ValueError, match="resolution"):
        load_scene(root, resolution=0)


def test_image_file_size_differs_from_colmap(tmp_path):
    """COLMAP calibrated at 200x100; the files are 100x50 -> intrinsics halved, size = file's."""
    root = _scene(tmp_path, _pinhole(200, 100, (100, 120, 100, 50)), {1: _img("a.png", 1)}, file_size=(100, 50))
    c = load_scene(root).all_cameras[0]
    assert (c.width, c.height) == (100, 50)
    np.testing.assert_allclose(c.K, [[50, 0, 50], [0, 60, 25], [0, 0, 1]])
    c = load_scene(root, resolution=2).all_cameras[0]           # then the rule applies to the file size
    assert (c.width, c.height) == (50, 25)
    np.testing.assert_allclose(c.K, [[25, 0, 25], [0, 30, 12.5], [0, 0, 1]])


def test_camera_models(tmp_path):
    ok = {"SIMPLE_PINHOLE": [80, 100, 50], "SIMPLE_RADIAL": [80, 100, 50, 0.0],
          "RADIAL": [80, 100, 50, 0, 0], "OPENCV": [80, 80, 100, 50, 0, 0, 0, 0]}
    for model, p in ok.items():
        root = _scene(tmp_path / model, _pinhole(params=p, model=model), {1: _img("a.png", 1)})
        np.testing.assert_array_equal(load_scene(root).all_cameras[0].K, [[80, 0, 100], [0, 80, 50], [0, 0, 1]])
    root = _scene(tmp_path / "dist", _pinhole(params=[80, 100, 50, 0.01], model="SIMPLE_RADIAL", cid=4),
                  {1: _img("a.png", 1, cid=4)}, ext=".bin")
    with pytest.raises(ValueError, match=r"cameras\.bin: camera 4 \(SIMPLE_RADIAL\) has non-zero distortion"
                                         r".*colmap image_undistorter"):
        load_scene(root)
    root = _scene(tmp_path / "fish", _pinhole(params=np.ones(8), model="OPENCV_FISHEYE"), {1: _img("a.png", 1)})
    with pytest.raises(ValueError, match=r"cameras\.txt: camera 1 has model OPENCV_FISHEYE.*not supported"):
        load_scene(root)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"empty: scene folder not found"):
        load_scene(tmp_path / "empty")
    root = _scene(tmp_path / "miss", _pinhole(), {1: _img("a.png", 1), 2: _img("sub/b.png", 2)}, skip=("b.png",))
    with pytest.raises(FileNotFoundError, match=r"images/b\.png not found \(listed as 'sub/b\.png' in .*images\.txt\)"):
        load_scene(root)
    with pytest.raises(FileNotFoundError, match=r"rgb/a\.png not found"):
        load_scene(root, images="rgb")
    root = _scene(tmp_path / "trunc", _pinhole(), {1: _img("a.png", 1, xys=[[1, 2]])}, ext=".bin")
    f = root / "sparse/0/images.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"images\.bin: truncated"):
        load_scene(root)
    root = _scene(tmp_path / "nocam", _pinhole(), {1: _img("a.png", 1)})
    (root / "sparse/0/cameras.txt").write_text("# no cameras\n")
    with pytest.raises(ValueError, match="uses camera 1, which is not in"):
        load_scene(root)
    root = _scene(tmp_path / "dup", _pinhole(), {1: _img("x.jpg", 1), 2: _img("sub/x.png", 2)})
    with pytest.raises(ValueError, match="have the same image_name 'x'"):
        load_scene(root)
