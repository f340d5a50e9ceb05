"""The interactive viewer (viewer.py, stages/viewer.py): its state checked against query.py's answers,
hand-built geometry and colours, and the whole viewer driven in a real headless Chromium."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

import query
import viewer
from arguments.cli import load_run_config
from scene.cameras import Camera, camera_from_pose, intrinsics, look_at
from scene.dataset import load_scene_from_config
from scene.errors import StageError
from scene.gaussian_model import load_ply, rgb_to_sh
from scene.selections import load_selection, read_index
from scene_factory import one_line_error, train_tiny_run
from stages.viewer import HEAT_STOPS, HIGHLIGHT, ViewerSession, heat_colors, splat_arrays


# ---------------------------------------------------------------------------------------------
# pieces with independent answers
def test_camera_from_pose_is_the_pinhole_of_a_look_at_camera():
    W, H, f = 80, 60, 70.0
    center, target = np.array([2.0, -1.0, 0.5]), np.array([0.1, 0.2, -0.3])
    R, t = look_at(center, target)
    ref = Camera(uid=0, image_name="v", R=R, t=t, K=intrinsics(f, f, W / 2, H / 2), width=W, height=H)
    assert math.isclose(ref.fov_y, 2 * math.atan(H / 2 / f))
    cam = camera_from_pose(R.T, center, ref.fov_y, W, H)     # a viewer's pose: camera-to-world + centre
    np.testing.assert_allclose(cam.R, R, atol=1e-12)
    np.testing.assert_allclose(cam.t, t, atol=1e-12)
    np.testing.assert_allclose(cam.K, ref.K, atol=1e-9)
    x = cam.R @ target + cam.t                               # the target projects to the image centre
    assert x[2] > 0 and math.isclose(f * x[0] / x[2] + W / 2, W / 2, abs_tol=1e-9)
    with pytest.raises(ValueError, match="fov_y"):
        camera_from_pose(R.T, center, 0.0, W, H)


def test_splat_arrays_of_hand_built_gaussians():
    a = math.pi / 2  # 90 degrees about z: diag(1, 4, 9) -> diag(4, 1, 9)
    params = {"means": torch.tensor([[1.0, 2.0, 3.0]]),
              "quats": torch.tensor([[math.cos(a / 2), 0.0, 0.0, math.sin(a / 2)]]),
              "scales": torch.log(torch.tensor([[1.0, 2.0, 3.0]])),
              "opacities": torch.tensor([0.0]),
              "sh0": rgb_to_sh(torch.tensor([[0.2, 0.5, 0.9]]))[:, None, :]}
    out = splat_arrays(params)
    np.testing.assert_allclose(out["covariances"][0], np.diag([4.0, 1.0, 9.0]), atol=1e-5)
    np.testing.assert_allclose(out["rgbs"][0], [0.2, 0.5, 0.9], atol=1e-6)
    np.testing.assert_allclose(out["opacities"], [[0.5]])
    np.testing.assert_allclose(out["centers"], [[1.0, 2.0, 3.0]])


def test_heat_colors_interpolate_the_stops():
    c = heat_colors(np.array([0.0, 0.5, 1.0, 0.125, -3.0, 7.0, np.nan]))
    np.testing.assert_allclose(c[:3], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(c[3], 0.5 * (HEAT_STOPS[0] + HEAT_STOPS[1]))
    np.testing.assert_allclose(c[4:], [[0, 0, 1], [1, 0, 0], [0, 0, 1]])   # clipped; NaN as 0


# ---------------------------------------------------------------------------------------------
# the session on a tiny trained run, against query.py
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    run = train_tiny_run(root, "tiny")
    cats = json.loads((root / "data" / "tiny" / "queries.json").read_text())["queries"]
    return run, cats


def session_of(run, *overrides) -> ViewerSession:
    cfg = load_run_config(run, (), list(overrides))
    return ViewerSession(cfg, run, torch.device("cpu"))


def cli_selection(run, name, *args):
    assert query.main(["-m", str(run), *args]) == 0
    return load_selection(run, name, load_ply(run / "instance" / "point_cloud.ply")["means"].shape[0])


def pixel_of(camera, points: np.ndarray) -> tuple[float, float]:
    """The median pixel of world points through ``camera`` (pinhole formula)."""
    x = points @ camera.R.T + camera.t
    uv = x[:, :2] / x[:, 2:3] * [camera.fx, camera.fy] + camera.K[:2, 2]
    return tuple(float(v) for v in np.median(uv, axis=0))


@pytest.mark.parametrize("mode", ["collaborative", "language_only"])
def test_text_query_is_query_py_selection(tiny, mode):
    run, cats = tiny
    s = session_of(run)
    s.set_options(mode=mode)
    for cat in cats[:2]:
        line = s.text(cat)
        expected = cli_selection(run, cat, "--query", cat, "--set", f"query.mode={mode}")
        assert expected.any()
        np.testing.assert_array_equal(s.selection, expected)
        assert f"{int(expected.sum())} of {s.n} Gaussians selected" in line


def test_tau_control_is_query_score_thresh(tiny):
    run, cats = tiny
    s = session_of(run)
    s.set_options(tau=0.8)
    s.text(cats[0])
    np.testing.assert_array_equal(s.selection, cli_selection(run, cats[0], "--query", cats[0],
                                                             "--set", "query.score_thresh=0.8"))
    with pytest.raises(ValueError, match="query.mode"):
        s.set_options(mode="psychic")


def test_highlight_and_heatmap_colours(tiny):
    run, cats = tiny
    s = session_of(run)
    rgb0, a0 = s.colors("highlight")                       # nothing selected: the model's own colours
    np.testing.assert_allclose(rgb0, s.base["rgbs"])
    s.text(cats[0])
    rgb, a = s.colors("highlight")
    sel, rest = s.selection, ~s.selection
    np.testing.assert_allclose(rgb[sel], 0.3 * s.base["rgbs"][sel] + 0.7 * np.array(HIGHLIGHT), atol=1e-6)
    np.testing.assert_allclose(a[sel], s.base["opacities"][sel])
    np.testing.assert_allclose(a[rest], 0.35 * s.base["opacities"][rest], atol=1e-6)
    heat, _ = s.colors("heatmap")
    top = int(np.argmax(s.scores))
    np.testing.assert_allclose(heat[top], HEAT_STOPS[-1], atol=1e-5)   # the most relevant Gaussian is red
    np.testing.assert_allclose(s.colors("plain")[0], s.base["rgbs"])


def test_click_is_the_point_prompt_and_actions_combine(tiny):
    run, cats = tiny
    cfg = load_run_config(run)
    cams = {c.image_name: c for c in load_scene_from_config(cfg.data, -1).all_cameras}
    view = sorted(cams)[0]
    cam = cams[view]
    assert cam.fx == cam.fy and tuple(cam.K[:2, 2]) == (cam.width / 2, cam.height / 2)
    browser_cam = camera_from_pose(cam.R.T, cam.center, cam.fov_y, cam.width, cam.height)
    s = session_of(run)
    means = s.base["centers"]
    pixels = []
    for cat in cats[:2]:
        s.text(cat)
        pixels.append(pixel_of(cam, means[s.selection]))
    (xa, ya), (xb, yb) = pixels
    a = cli_selection(run, "pa", "--point", f"{xa}", f"{ya}", "--view", view, "--name", "pa")
    b = cli_selection(run, "pb", "--point", f"{xb}", f"{yb}", "--view", view, "--name", "pb")
    assert a.any() and b.any() and not np.array_equal(a, b)
    assert "click set" in s.click(browser_cam, xa, ya, "set")
    np.testing.assert_array_equal(s.selection, a)
    s.click(browser_cam, xb, yb, "add")
    np.testing.assert_array_equal(s.selection, a | b)
    s.click(browser_cam, xa, ya, "remove")
    np.testing.assert_array_equal(s.selection, (a | b) & ~a)
    if not _covered(s, browser_cam):                       # a click on the background: a message
        with pytest.raises(StageError, match="empty background"):
            s.click(browser_cam, 0, 0, "set")


def _covered(s, cam) -> bool:
    from gaussian_renderer import pixel_contributions
    idx, _ = pixel_contributions(s.full.params, cam, [[0.0, 0.0]], top_k=1)
    return bool(idx[0, 0] >= 0)


def test_export_remove_reset_write_new_files(tiny):
    run, cats = tiny
    s = session_of(run)
    with pytest.raises(StageError, match="nothing is selected"):
        s.export()
    s.text(cats[0])
    sel = s.selection.copy()
    qdir = run / "queries"
    for _ in range(2):                                      # the same selection twice: two new files
        old = {p.name: p.read_bytes() for p in qdir.iterdir() if p.is_file() and p.name != "index.json"}
        path, line = s.export()
        assert path.name not in old and path.name.startswith(cats[0]) and "exported" in line
        assert {n: (qdir / n).read_bytes() for n in old} == old   # nothing written before is changed
        np.testing.assert_allclose(load_ply(path)["means"].numpy(), s.base["centers"][sel])
        name = path.name[:-len(".ply")]
        rec = read_index(run)["queries"][name]
        assert rec["mode"] == "viewer" and rec["n_selected"] == int(sel.sum())
        np.testing.assert_array_equal(load_selection(run, name, s.n), sel)

    rpath, line = s.remove()
    assert rpath.name.endswith("_removed.ply") and f"({int(sel.sum())} removed)" in line
    assert load_ply(rpath)["means"].shape[0] == s.n - int(sel.sum())
    assert not s.selection.any()
    _, alpha = s.colors("highlight")
    assert (alpha[sel] == 0).all() and (alpha[~sel] > 0).any()
    s.text(cats[0])                                         # the removed object cannot be selected again
    assert not (s.selection & sel).any()
    s.reset()
    assert not s.removed.any() and not s.selection.any()


def test_after_remove_clusters_and_coverage_are_of_the_scene_shown(tiny):
    """instance_only clusters and cos3d_plus's mask coverage were derived on the whole model; after a
    Remove they must be those of the Gaussians kept (a stale full-size cache broke both)."""
    from scene.grounding import best_clusters, instance_clusters

    run, cats = tiny
    s = session_of(run, "query.mask_coverage_min=0.5")
    s.set_options(mode="instance_only")
    s.text(cats[0])                                         # fills the cluster cache of the whole model
    sel = s.selection.copy()
    assert sel.any()
    s.remove()
    s.text(cats[1])
    keep = torch.from_numpy(~sel)
    shown = s._shown
    q = s.cfg.query
    labels = instance_clusters(shown.feats, shown.opacity, shown.d, q.instance_multiplier, q.seed_opacity)
    enc = s.encoder
    ref = best_clusters(labels, shown.lang, enc.encode([cats[1]]), enc.encode(list(q.negatives)),
                        min_size=math.ceil(q.cluster_min_frac * int(keep.sum())))[0]
    expected = np.zeros(s.n, dtype=bool)
    expected[keep.numpy()] = ref.numpy()
    np.testing.assert_array_equal(s.selection, expected)
    s.set_options(mode="collaborative")                     # coverage: computed on the kept Gaussians
    s.text(cats[1])
    assert not (s.selection & sel).any()
    s.reset()


def test_bad_input_messages(tiny):
    run, cats = tiny
    s = session_of(run, "query.text_encoder=table")
    with pytest.raises(StageError, match="type a query"):
        s.text("   ")
    with pytest.raises(Exception, match="flying saucer") as e:
        s.text("flying saucer")
    assert "text_features.json" in str(e.value)
    s.text(cats[0])                                         # and it still answers
    assert s.selection.any()


def test_cli_refuses_bad_runs_and_hosts(tiny, tmp_path, capsys):
    assert viewer.main(["-m", str(tmp_path / "nope")]) == 2
    one_line_error(capsys, "instance stage is not done")
    assert viewer.main(["-m", str(tiny[0]), "--host", "no.such.host.invalid"]) == 2
    one_line_error(capsys, "--host no.such.host.invalid")
    assert viewer.main(["-m", str(tiny[0]), "--port", "70000"]) == 2
    one_line_error(capsys, "--port 70000")


# ---------------------------------------------------------------------------------------------
# the viewer in a real headless Chromium
def _chromium_or_skip():
    from script.viewer_screenshot import chromium_path

    pytest.importorskip("playwright", reason="pip install playwright (the dev extra)")
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("CI has no Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium (apt-get install chromium)")


def _magenta_pixels(png: bytes) -> int:
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((img[..., 0] > 170) & (img[..., 2] > 170) & (img[..., 1] < 100)).sum())


@pytest.mark.slow
def test_viewer_in_headless_chromium(tiny):
    _chromium_or_skip()
    from script.viewer_screenshot import ViewerPage, wait_for, wait_status

    run, cats = tiny
    cfg = load_run_config(run, (), ["query.text_encoder=table"])
    v = viewer.Viewer(run, cfg, torch.device("cpu"), host="127.0.0.1", port=0).start()
    page = None
    try:
        assert v.url.startswith("http://127.0.0.1:") and v.server.get_host() == "127.0.0.1"
        page = ViewerPage(v.url, 1000, 700, timeout_s=60)
        client = wait_for(lambda: list(v.server.get_clients().values()), 60, "the page to connect")[0]
        wait_for(lambda: page.page.locator("canvas").count(), 60, "the 3D canvas")
        page.page.wait_for_timeout(3000)                    # splats uploaded and drawn
        page.dismiss_notifications()
        before = page.screenshot()
        assert _magenta_pixels(before) < 20

        status = v.last_status
        page.query(cats[0])
        line = wait_status(v, cats[0], before=status)
        expected = cli_selection(run, cats[0], "--query", cats[0], "--set", "query.text_encoder=table")
        np.testing.assert_array_equal(v.session.selection, expected)
        assert f"{int(expected.sum())} of" in line
        page.page.wait_for_timeout(2500)
        shot = page.screenshot()
        img = np.frombuffer(shot, dtype=np.uint8)
        assert img.size > 1000 and _magenta_pixels(shot) > 200, _magenta_pixels(shot)
        from io import BytesIO

        from PIL import Image
        assert np.asarray(Image.open(BytesIO(shot)).convert("L")).std() > 5   # not blank

        for bad, needle in (("", "type a query"), ("flying saucer", "flying saucer")):
            status = v.last_status
            page.query(bad)
            assert wait_status(v, needle, before=status).startswith("⚠")
        page.page.get_by_text("flying saucer", exact=False).first.wait_for(timeout=30_000)  # shown in the page

        # clicks in the browser's own camera: on the object, then shift (add) and alt (remove)
        status = v.last_status
        page.query(cats[0])
        wait_status(v, cats[0], before=status)
        cam = client.camera
        W, H = int(cam.image_width), int(cam.image_height)
        from scene.colmap import qvec2rotmat
        bcam = camera_from_pose(qvec2rotmat(cam.wxyz), cam.position, float(cam.fov), W, H)
        x, y = pixel_of(bcam, v.session.base["centers"][expected])
        for modifier, needle in ((None, "click set"), ("Shift", "click add"), ("Alt", "click remove")):
            status = v.last_status
            page.click_canvas(x / W, y / H, modifier)
            wait_status(v, needle, before=status)
            if modifier is None:
                picked = v.session.selection.copy()
                assert picked.any()
            elif modifier == "Shift":                        # the same instance again: no change
                np.testing.assert_array_equal(v.session.selection, picked)
        assert not v.session.selection.any()
    finally:
        if page is not None:
            page.close()
        v.stop()
