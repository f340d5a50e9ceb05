"""Point prompts: ``query.py --point X Y --view NAME`` (stages/prompts.py, docs/method.md §5.6) and the
per-pixel compositing weights they read (gaussian_renderer/contributions.py).

* ``pixel_contributions`` against the renderer itself: features = the identity matrix render every
  Gaussian's weight map exactly (one channel per Gaussian).
* the set rules (union, negative points) and the bad-input lines on a hand-built model whose
  instance regions are known;
* a point on object k of a generated scene selects object k (IoU with its ground-truth masks in every
  labelled frame, through the unchanged render.py / eval_lerf.py), a background point no object.
"""
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

import eval_lerf
import query
import render
from arguments import Config
from gaussian_renderer import pixel_contributions
from gaussian_renderer import project_gaussians
from gaussian_renderer import render as render_view
from dense_reference import dense_rasterize  # tests/ is on pytest's pythonpath (pyproject.toml)
from scene.cameras import Camera, intrinsics, look_at
from scene.errors import StageError
from scene.lerf_eval import iou
from scene.lerf_labels import load_binary, read_gt
from stages.prompts import find_view, point_selection
from stages.query import QueryModel
from scene_factory import one_line_error, train_tiny_run  # tests/ is on the pythonpath (pyproject.toml)


def _camera(width=40, height=30, name="frame_00001", eye=(0.0, -3.0, 0.4)):
    R, t = look_at(eye, (0.0, 0.0, 0.0))
    return Camera(uid=0, image_name=name, R=R, t=t, K=intrinsics(0.9 * width, 0.9 * width, width / 2, height / 2),
                  width=width, height=height)


def _random_scene(n=40, seed=1):
    """Overlapping Gaussians in front of the camera; some nearly opaque, so pixels reach the T stop."""
    g = torch.Generator().manual_seed(seed)
    return {"means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.4, 1.0, 1.0]),
            "scales": torch.log(torch.rand(n, 3, generator=g) * 0.3 + 0.05),
            "quats": torch.randn(n, 4, generator=g),
            "opacities": torch.where(torch.rand(n, generator=g) < 0.5, torch.full((n,), 7.0),
                                     torch.randn(n, generator=g) * 2.0)}


@pytest.mark.parametrize("tile_size", [16, 8])
def test_pixel_contributions_are_the_renderers_weights(tile_size):
    N, cam = 40, _camera()
    g = _random_scene(N)
    out = render_view(g, cam, features=torch.eye(N), backend="torch", return_depth=False, tile_size=tile_size)
    dense, alpha = out.color, out.alpha[..., 0]                 # [H,W,N]: every Gaussian's weight map
    assert (dense > 0).sum(-1).max() >= 6                         # deep lists
    m2, co, z, radii = project_gaussians(g["means"], g["quats"], torch.exp(g["scales"]), torch.tensor(
        cam.viewmat, dtype=torch.float32), torch.tensor(cam.K, dtype=torch.float32), cam.width, cam.height)
    no_stop, _ = dense_rasterize(m2, co, torch.sigmoid(g["opacities"]), torch.eye(N), z, (radii > 0).all(-1),
                                 cam.width, cam.height, t_eps=0.0)
    assert float((no_stop - dense).abs().max()) > 1e-3            # the transmittance stop matters here
    H, W = alpha.shape
    rng = np.random.default_rng(0)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    pix = np.stack([cols.ravel() + rng.uniform(0, 1, H * W), rows.ravel() + rng.uniform(0, 1, H * W)], 1)
    idx, w = pixel_contributions(g, cam, pix, top_k=N, tile_size=tile_size)   # every contribution
    full = torch.zeros(H * W, N).scatter_add_(1, idx.clamp(min=0), torch.where(idx >= 0, w, 0.0))
    assert torch.allclose(full, dense.reshape(H * W, N), atol=1e-6)
    assert torch.allclose(w.sum(1), alpha.reshape(-1), atol=1e-6)        # the weights make the alpha
    assert bool((w[:, :-1] >= w[:, 1:]).all())                            # by decreasing weight
    # the top 3 of a few pixels: the 3 largest channels of the reference
    k_idx, k_w = pixel_contributions(g, cam, pix[::37], top_k=3, tile_size=tile_size)
    ref_w, ref_i = torch.sort(dense.reshape(H * W, N)[::37], dim=1, descending=True)
    assert torch.allclose(k_w, ref_w[:, :3], atol=1e-6)
    distinct = (ref_w[:, :3] > 0) & (ref_w[:, :3] - ref_w[:, 1:4] > 1e-5)
    assert torch.equal(k_idx[distinct], ref_i[:, :3][distinct])
    assert bool((k_idx[ref_w[:, :3] == 0] == -1).all())
    with pytest.raises(ValueError, match="outside the 40x30 image"):
        pixel_contributions(g, cam, [[40.0, 3.0]])


# ---------------------------------------------------------------------------------------------
# A hand-built model: four blobs of Gaussians side by side, instance features A = e1, B = e2,
# C = e3 and M = (e1 + e2)/sqrt(2); with d = 1 the region threshold is 1 - 0.4 = 0.6, so
# region(A) = A + M, region(B) = B + M, region(C) = C (cos(M, A) = 0.71 > 0.6, cos(A, B) = 0).
# O: one faint Gaussian (opacity 0.35) in front of C (opacity 0.5) with a feature of its own (e4): the top
# contributor of C's centre pixel, but its region (itself) holds less than half of that pixel.
BLOBS = {"A": (-0.9, 0.0), "M": (-0.3, 0.0), "B": (0.3, 0.0), "C": (0.9, 0.0)}
FEATS = {"A": (1, 0, 0, 0), "B": (0, 1, 0, 0), "C": (0, 0, 1, 0), "M": (0.7071, 0.7071, 0, 0)}


@pytest.fixture(scope="module")
def blobs():
    g = torch.Generator().manual_seed(1)
    means, feats, owner = [], [], []
    for name, (x, z) in BLOBS.items():
        means.append(torch.tensor([x, 0.0, z]) + 0.05 * torch.randn(6, 3, generator=g))
        feats.append(torch.tensor(FEATS[name], dtype=torch.float32).expand(6, 4))
        owner += [name] * 6
    means.append(torch.tensor([[BLOBS["C"][0] * 2.5 / 3, -0.5, 0.0]]))  # on the ray to C's centre
    feats.append(torch.tensor([[0.0, 0, 0, 1]]))
    owner.append("O")
    n = len(owner)
    opacities = torch.full((n,), 3.0)
    opacities[np.array(owner) == "C"] = 0.0                      # 0.5: O stays the top contributor
    opacities[-1] = float(np.log(0.35 / 0.65))
    params = {"means": torch.cat(means), "scales": torch.full((n, 3), float(np.log(0.06))),
              "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), "opacities": opacities,
              "ins_feat": torch.cat(feats)}
    qm = QueryModel(params, torch.zeros(n, 4), 1.0, torch.nn.functional.normalize(params["ins_feat"], dim=-1),
                    torch.sigmoid(params["opacities"]), {})
    cam = _camera(64, 24, eye=(0.0, -3.0, 0.0))
    proj = (cam.K @ (cam.R @ np.array([[x, 0.0, z] for x, z in BLOBS.values()]).T + cam.t[:, None])).T
    pixel = {name: list(p[:2] / p[2]) for name, p in zip(BLOBS, proj)}
    return Config(), qm, cam, pixel, np.array(owner)


def _members(owner, *names):
    return np.isin(owner, names)


def test_points_union_and_negative_points(blobs):
    cfg, qm, cam, px, owner = blobs
    sel = lambda pos, neg=(): point_selection(cfg, qm, cam, [px[p] for p in pos], [px[p] for p in neg])  # noqa
    a, info = sel(["A"])
    assert np.array_equal(a.numpy(), _members(owner, "A", "M"))
    assert info["seeds"][0]["rank"] == 0 and owner[info["seeds"][0]["gaussian"]] == "A"  # the top contributor
    c, info = sel(["C"])
    assert np.array_equal(c.numpy(), _members(owner, "C"))
    seed = info["seeds"][0]                   # O, the top contributor, explains < half: the next one
    assert seed["rank"] >= 1 and owner[seed["gaussian"]] == "C" and seed["share"] >= 0.5, seed
    idx, w = pixel_contributions(qm.params, cam, [px["C"]])
    assert owner[int(idx[0, 0])] == "O" and float(w[0, 0]) < 0.5 * float(w[0].sum())
    assert np.array_equal(sel(["A", "B"])[0].numpy(), _members(owner, "A", "M", "B"))          # union
    assert np.array_equal(sel(["A", "C"], ["B"])[0].numpy(), _members(owner, "A", "C"))      # minus B + M
    assert np.array_equal(sel(["M"], ["C"])[0].numpy(), _members(owner, "A", "M", "B"))      # disjoint: no-op
    assert not sel(["A"], ["M"])[0].any()                                                    # all removed


def test_bad_points_are_one_line_refusals(blobs):
    cfg, qm, cam, px, owner = blobs
    with pytest.raises(StageError, match=r"point \(64, 3\) is outside view frame_00001, which is 64x24 pixels"):
        point_selection(cfg, qm, cam, [[64, 3]])
    with pytest.raises(StageError, match=r"negative point \(1, -0.5\) is outside view"):
        point_selection(cfg, qm, cam, [px["A"]], [[1, -0.5]])
    for pos, neg, what in (([[1.0, 1.0]], [], "point"), ([px["A"]], [[1.0, 1.0]], "negative point")):
        with pytest.raises(StageError, match=rf"^{what} \(1, 1\) of view frame_00001 is on empty background: no "
                                             r"Gaussian contributes to that pixel, so its selection would be empty"):
            point_selection(cfg, qm, cam, pos, neg)
    cams = [_camera(name=f"frame_{i:05d}") for i in range(1, 8)]
    with pytest.raises(StageError, match=r"view 'frame_9' is not a view of this scene \(7 views: frame_00001, "
                                         r"frame_00002, frame_00003, frame_00004, frame_00005, \.\.\.\)"):
        find_view(cams, "frame_9")


# ---------------------------------------------------------------------------------------------
# The tiny trained generated scene of tests/scene_factory.py: three large objects close to the camera.
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("points")
    run = train_tiny_run(root, "p")
    return root / "data", run, read_gt(root / "data" / "label" / "p" / "gt")


def _deepest(mask):
    """(x, y) of the pixel farthest from the mask's edge."""
    y, x = np.unravel_index(np.argmax(distance_transform_edt(mask)), mask.shape)
    return int(x), int(y)


def test_a_point_on_an_object_selects_that_object(trained, capsys):
    data, run, gt = trained
    frame = sorted(gt)[0]
    for cat, mask in gt[frame].items():           # the point in one frame, the IoU in every labelled one
        x, y = _deepest(mask)
        assert query.main(["-m", str(run), "--point", str(x), str(y), "--view", frame, "--name", cat]) == 0
    background = ~np.any(list(gt[frame].values()), axis=0)
    bx, by = _deepest(background)
    assert query.main(["-m", str(run), "--point", str(bx), str(by), "--view", frame]) == 0
    index = json.loads((run / "queries" / "index.json").read_text())["queries"]
    bg_name = f"point_{frame}_{bx}_{by}"
    assert index[bg_name]["prompt"] == {"view": frame, "points": [[bx, by]], "negative_points": []}
    assert index[bg_name]["mode"] == "point" and index[bg_name]["n_selected"] > 0
    assert render.main(["-m", str(run)]) == 0                   # unchanged: renders every recorded selection
    ious, bg = {}, {}
    for f, cats in gt.items():
        for cat, mask in cats.items():
            ious[f, cat] = iou(load_binary(run / "renders" / f / f"{cat}.png"), mask)
            bg[f, cat] = iou(load_binary(run / "renders" / f / f"{bg_name}.png"), mask)
    with capsys.disabled():
        print(f"\npoint prompts, IoU with the object's gt: {sorted(round(v, 3) for v in ious.values())}; "
              f"background point, largest IoU with any object: {max(bg.values()):.3f}")
    assert min(ious.values()) >= 0.6, ious
    assert max(bg.values()) < 0.2, bg
    capsys.readouterr()
    assert eval_lerf.main(["--scenes", "p", "--label_root", str(data / "label"), "--runs_root", str(run.parent)]) == 0
    scene = json.loads((run.parent / "metrics.json").read_text())["scenes"]["p"]
    assert scene["missing"] == 0 and scene["mIoU"] >= 60, scene



def test_bad_point_prompts_on_the_command_line(trained, capsys):
    _, run, gt = trained
    frame = sorted(gt)[0]
    before = (run / "queries" / "index.json").read_bytes() if (run / "queries" / "index.json").exists() else None
    cases = [(["--point", "3", "4"], ["--point needs --view"]),
             (["--view", frame], ["go with --point"]),
             (["--point", "3", "4", "--view", frame, "--query", "apple"], ["not both"]),
             (["--point", "3", "4", "--view", "frame_123"], ["'frame_123' is not a view", "10 views: frame_00001"]),
             (["--point", "64", "4", "--view", frame], ["outside view", "64x48 pixels"]),
             (["--point", "3", "48", "--view", frame], ["outside view", "0 <= y < 48"]),
             (["--point", "3", "4", "--view", frame, "--set", "renderer.near=100"], ["on empty background"])]
    for argv, needles in cases:
        assert query.main(["-m", str(run), *argv]) == 2, argv
        one_line_error(capsys, *needles)
    after = (run / "queries" / "index.json").read_bytes() if (run / "queries" / "index.json").exists() else None
    assert after == before                                     # nothing recorded
