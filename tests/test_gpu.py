"""GPU tests: the gsplat CUDA backend against the torch reference backend, and the pipeline on CUDA.

Every test is marked ``gpu``: skipped without CUDA (tests/conftest.py) and, through the ``cuda``
fixture, skipped with the reason when gsplat's CUDA extension cannot be built or loaded (no nvcc,
a build for another GPU architecture, ...). The first run compiles gsplat's kernels (minutes).

Parity: random scenes (Gaussians in and around the view frustum, some behind the camera, image
sizes that are not multiples of the tile) rendered by gsplat (float32) and by the torch backend in
float64 as the reference. Images agree to float32 rounding except for the rare (pixel, Gaussian) pair
whose alpha sits exactly at the 1/255 cut, hence "99.9 % of values within 1e-4, all within 5e-2".
Gradients agree as whole tensors (relative L2 error). gsplat's radii are opacity-aware (see
gaussian_renderer/gsplat_backend.py), so they are only required to be <= the torch backend's.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gaussian_renderer import RenderOutput, render, resolve_backend
from scene.cameras import Camera, intrinsics, look_at

SH_KEYS = ("sh0", "shN")
GEOM_KEYS = ("means", "quats", "scales", "opacities")


@pytest.fixture(scope="module")
def cuda():
    """The CUDA device, once gsplat's extension is built and renders (else skip, saying why)."""
    try:
        from gaussian_renderer import gsplat_backend
    except ImportError as e:
        pytest.skip(f"gsplat backend not importable: {e}")
    ok, reason = gsplat_backend.extension_status()
    if not ok:
        pytest.skip(f"gsplat CUDA extension unavailable: {reason}")
    return torch.device("cuda", torch.cuda.current_device())


# ----------------------------------------------------------------------------- scenes
def make_camera(W: int, H: int, f: float, seed: int) -> Camera:
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=3)
    centre = 4.0 * centre / np.linalg.norm(centre)
    R, t = look_at(centre, rng.normal(scale=0.1, size=3), up=(0.0, 0.0, 1.0))
    K = intrinsics(f, f * 1.03, W / 2 + 0.37, H / 2 - 0.21)
    return Camera(uid=0, image_name=f"cam{seed}", R=R, t=t, K=K, width=W, height=H)


def make_gaussians(N: int, seed: int, device, feature_dim: int | None = None, cam: Camera | None = None,
                   n_behind: int = 20) -> tuple[dict, torch.Tensor | None]:
    """Render()'s parameter dict (float64 on ``device``) + optional features [N, feature_dim].

    Means in a 2.4-wide cube around the origin (the camera looks at it from distance 4), log scales
    of 0.02..0.3, logit opacities of 0.02..0.98, SH up to degree 3; ``n_behind`` Gaussians are moved
    behind the camera."""
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    means = (torch.rand(N, 3, generator=g, dtype=d) * 2 - 1) * 1.2                    # [N,3]
    if cam is not None and n_behind:
        means[:n_behind] = torch.as_tensor(cam.center, dtype=d) - 2.0 * torch.as_tensor(cam.R[2], dtype=d)
        means[:n_behind] += 0.1 * torch.randn(n_behind, 3, generator=g, dtype=d)
    params = {
        "means": means,
        "quats": torch.randn(N, 4, generator=g, dtype=d),                               # [N,4]
        "scales": torch.log(torch.rand(N, 3, generator=g, dtype=d) * 0.28 + 0.02),      # [N,3] log
        "opacities": torch.logit(torch.rand(N, generator=g, dtype=d) * 0.96 + 0.02),    # [N] logit
        "sh0": torch.randn(N, 1, 3, generator=g, dtype=d) * 0.5,                        # [N,1,3]
        "shN": torch.randn(N, 15, 3, generator=g, dtype=d) * 0.1,                       # [N,15,3]
    }
    feats = None if feature_dim is None else torch.randn(N, feature_dim, generator=g, dtype=d)  # [N,D]
    params = {k: v.to(device) for k, v in params.items()}
    return params, (None if feats is None else feats.to(device))


def leaves(params: dict, feats, dtype) -> tuple[dict, torch.Tensor | None]:
    """Fresh leaf copies (requires_grad) in ``dtype``."""
    p = {k: v.detach().to(dtype).clone().requires_grad_(True) for k, v in params.items()}
    f = None if feats is None else feats.detach().to(dtype).clone().requires_grad_(True)
    return p, f


def assert_images_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """a, b [H,W,C]: 99.9 % of the values within 1e-4, every value within 5e-2 (a pair flipping at
    the 1/255 alpha cut changes a pixel by ~0.004 x its colour)."""
    diff = (a.detach().double() - b.detach().double()).abs()
    frac_bad = float((diff > 1e-4).double().mean())
    assert frac_bad < 1e-3, f"{what}: {100 * frac_bad:.3f}% of values differ by > 1e-4 (max {float(diff.max()):.2e})"
    assert float(diff.max()) < 5e-2, f"{what}: max difference {float(diff.max()):.3e}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def render_pair(params, feats, cam, bg, sh_degree=None):
    """(gsplat float32 output, torch float64 reference output, their leaf tensors)."""
    pg, fg = leaves(params, feats, torch.float32)
    pt, ft = leaves(params, feats, torch.float64)
    kw = dict(sh_degree=sh_degree, return_depth=True)
    og = render(pg, cam, fg, backend="gsplat", bg=None if bg is None else bg.float(), **kw)
    ot = render(pt, cam, ft, backend="torch", bg=None if bg is None else bg.double(), **kw)
    return og, ot, (pg, fg), (pt, ft)


def check_forward(og: RenderOutput, ot: RenderOutput, N: int, D: int, W: int, H: int) -> None:
    assert og.color.shape == (H, W, D) and og.alpha.shape == (H, W, 1) and og.depth.shape == (H, W, 1)
    assert og.means2d.shape == (1, N, 2) and og.radii.shape == (1, N, 2) and og.radii.dtype == torch.int32
    assert og.visible.shape == (N,) and (og.width, og.height) == (W, H)
    assert og.info["n_cameras"] == 1 and og.info["width"] == W
    assert_images_close(og.color, ot.color, "color")
    assert_images_close(og.alpha, ot.alpha, "alpha")
    assert float((ot.alpha > 0.05).double().mean()) > 0.2, "the test scene covers too little of the image"
    # expected depth = accumulated z / alpha: compared where alpha is not tiny (a 1/255 flip moves it
    # by ~0.004 * dz / alpha); exactly 0 where neither backend drew anything
    dg, dt, ag, at = og.depth[..., 0], ot.depth[..., 0], og.alpha[..., 0], ot.alpha[..., 0]
    solid = (at > 0.3) & (ag > 0.3)
    rel_depth = (dg.double() - dt).abs()[solid] / dt[solid]
    assert float((rel_depth > 1e-4).double().mean()) < 1e-3 and float(rel_depth.max()) < 2e-2
    empty = (at == 0) & (ag == 0)
    assert not dg[empty].any()
    # visibility / radii: gsplat's opacity-aware boxes are never larger
    vg, vt = og.visible, ot.visible
    assert not (vg & ~vt).any(), "gsplat sees Gaussians the torch backend culls"
    assert vg.sum() >= 0.9 * vt.sum()
    assert (og.radii[0][vg] <= ot.radii[0][vg]).all()
    both = vg & vt
    torch.testing.assert_close(og.means2d[0][both].double(), ot.means2d[0][both].detach(), atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------- parity: forward
@pytest.mark.gpu
@pytest.mark.parametrize("seed,sh_degree", [(0, 3), (1, 1), (2, 0)])
def test_forward_parity_rgb(cuda, seed, sh_degree):
    W, H = 157, 119
    cam = make_camera(W, H, f=150.0, seed=seed)
    params, _ = make_gaussians(3000, seed, cuda, cam=cam)
    bg = torch.rand(3, generator=torch.Generator().manual_seed(seed)).to(cuda)
    og, ot, _, _ = render_pair(params, None, cam, bg, sh_degree=sh_degree)
    check_forward(og, ot, 3000, 3, W, H)


@pytest.mark.gpu
@pytest.mark.parametrize("seed,zero_bg", [(3, True), (4, False), (5, False)])
def test_forward_parity_16d_features(cuda, seed, zero_bg):
    W, H = 130, 97
    cam = make_camera(W, H, f=120.0, seed=seed)
    params, feats = make_gaussians(2500, seed, cuda, feature_dim=16, cam=cam)
    bg = None if zero_bg else torch.randn(16, generator=torch.Generator().manual_seed(seed)).to(cuda)
    og, ot, _, _ = render_pair(params, feats, cam, bg)
    check_forward(og, ot, 2500, 16, W, H)


# ----------------------------------------------------------------------------- parity: backward
def check_backward(og, ot, pg, fg, pt, ft, seed: int) -> None:
    """Backprop the same random linear functional of colour, alpha and depth through both."""
    g = torch.Generator().manual_seed(100 + seed)
    wc, wa, wd = (torch.randn(og.color.shape, generator=g), torch.randn(og.alpha.shape, generator=g),
                  torch.randn(og.depth.shape, generator=g))

    def loss(o):
        dev, dt = o.color.device, o.color.dtype
        return ((o.color * wc.to(dev, dt)).sum() + (o.alpha * wa.to(dev, dt)).sum()
                + 0.1 * (o.depth * wd.to(dev, dt)).sum())

    og.means2d.retain_grad()
    ot.means2d.retain_grad()
    loss(og).backward()
    loss(ot).backward()
    keys = list(GEOM_KEYS) + ([] if fg is not None else list(SH_KEYS))
    for k in keys:
        assert pg[k].grad is not None and torch.isfinite(pg[k].grad).all(), k
        e = rel_err(pg[k].grad, pt[k].grad)
        assert e < 2e-3, f"grad {k}: relative error {e:.2e}"
    if fg is not None:
        e = rel_err(fg.grad, ft.grad)
        assert e < 2e-3, f"grad features: relative error {e:.2e}"
    both = og.visible & ot.visible
    e = rel_err(og.means2d.grad[0][both], ot.means2d.grad[0][both])
    assert e < 2e-3, f"means2d grad (what DefaultStrategy reads): relative error {e:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("seed,sh_degree", [(10, 3), (11, 2)])
def test_backward_parity_rgb(cuda, seed, sh_degree):
    W, H = 101, 77
    cam = make_camera(W, H, f=100.0, seed=seed)
    params, _ = make_gaussians(1500, seed, cuda, cam=cam)
    bg = torch.rand(3, generator=torch.Generator().manual_seed(seed)).to(cuda)
    og, ot, (pg, fg), (pt, ft) = render_pair(params, None, cam, bg, sh_degree=sh_degree)
    check_backward(og, ot, pg, fg, pt, ft, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [12, 13])
def test_backward_parity_16d_features(cuda, seed):
    W, H = 96, 80
    cam = make_camera(W, H, f=90.0, seed=seed)
    params, feats = make_gaussians(1500, seed, cuda, feature_dim=16, cam=cam)
    og, ot, (pg, fg), (pt, ft) = render_pair(params, torch.nn.functional.normalize(feats, dim=-1), cam, None)
    check_backward(og, ot, pg, fg, pt, ft, seed)


# ----------------------------------------------------------------------------- contract details
@pytest.mark.gpu
def test_auto_backend_is_gsplat_on_cuda(cuda):
    assert resolve_backend("auto", cuda) == "gsplat"
    assert resolve_backend("auto", "cpu") in ("cpp", "torch")


@pytest.mark.gpu
def test_dtypes_empty_and_bad_input(cuda):
    W, H = 40, 30
    cam = make_camera(W, H, f=40.0, seed=7)
    params, _ = make_gaussians(200, 7, cuda, cam=cam)
    o64 = render(params, cam, backend="gsplat")                              # float64 in -> float64 out
    o32 = render({k: v.float() for k, v in params.items()}, cam, backend="gsplat")
    assert o64.color.dtype == torch.float64 and o64.depth.dtype == torch.float64
    torch.testing.assert_close(o64.color.float(), o32.color)
    assert render(params, cam, backend="gsplat", return_depth=False).depth is None
    empty = {k: v[:0] for k, v in params.items()}
    bg = torch.tensor([0.25, 0.5, 0.75], device=cuda, dtype=torch.float64)   # exact in float32
    out = render(empty, cam, backend="gsplat", bg=bg)
    assert torch.equal(out.color, bg.expand(H, W, 3)) and not out.alpha.any() and out.means2d.shape == (1, 0, 2)
    behind, _ = make_gaussians(50, 7, cuda, cam=cam, n_behind=50)            # nothing in front of the camera
    out = render(behind, cam, backend="gsplat", bg=bg)
    assert torch.equal(out.color, bg.expand(H, W, 3)) and not out.alpha.any() and not out.depth.any()
    assert not out.visible.any() and out.radii.shape == (1, 50, 2)
    with pytest.raises(ValueError, match="bg"):
        render(params, cam, backend="gsplat", bg=[0.0, 1.0])
    with pytest.raises(ValueError, match="sh_degree"):
        render({**params, "shN": params["shN"][:, :3]}, cam, backend="gsplat", sh_degree=2)
    with pytest.raises(ValueError, match="features"):
        render(params, cam, torch.zeros(5, 16, device=cuda), backend="gsplat")
    with pytest.raises(ValueError, match="CUDA"):
        render({k: v.cpu() for k, v in params.items()}, cam, backend="gsplat")


@pytest.mark.gpu
def test_default_strategy_reads_gsplat_outputs(cuda):
    """One DefaultStrategy update from a gsplat render: grad2d = |means2d.grad * (W/2, H/2)| on the
    visible Gaussians, count = visibility; then a few densifying steps change N without errors."""
    from gsplat.strategy import DefaultStrategy

    from scene.gaussian_model import make_parameters

    W, H = 64, 48
    cam = make_camera(W, H, f=60.0, seed=8)
    raw, _ = make_gaussians(400, 8, cuda, cam=cam)
    params = make_parameters({k: v.float() for k, v in raw.items()})
    opts = {k: torch.optim.Adam([p], lr=1e-3, eps=1e-15) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, refine_stop_iter=100, grow_grad2d=1e-7,
                               verbose=False)
    strategy.check_sanity(params, opts)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(8)).to(cuda)
    out = render(params, cam, backend="gsplat")
    strategy.step_pre_backward(params, opts, state, 0, out.info)
    ((out.color - target) ** 2).mean().backward()
    strategy.step_post_backward(params, opts, state, 0, out.info, packed=False)
    vis = out.visible
    expect = (out.means2d.grad[0] * torch.tensor([W / 2.0, H / 2.0], device=cuda)).norm(dim=-1)
    torch.testing.assert_close(state["grad2d"][vis], expect[vis])
    assert torch.equal(state["count"], vis.float()) and not vis[:20].any()
    for step in range(1, 6):
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        out = render(params, cam, backend="gsplat")
        strategy.step_pre_backward(params, opts, state, step, out.info)
        ((out.color - target) ** 2).mean().backward()
        strategy.step_post_backward(params, opts, state, step, out.info, packed=False)
        for o in opts.values():
            o.step()
    assert params["means"].shape[0] != 400 and params["means"].device.type == cuda.type


@pytest.mark.gpu
def test_million_gaussians_fit_in_memory(cuda):
    """1M small Gaussians at LERF size (988x731), forward + backward, 16-D features: a sane peak.
    A kernel build for the wrong GPU architecture typically shows up here as an absurd allocation."""
    W, H, N = 988, 731, 1_000_000
    cam = make_camera(W, H, f=900.0, seed=9)
    g = torch.Generator(device=cuda).manual_seed(9)
    p = {"means": (torch.rand(N, 3, generator=g, device=cuda) * 2 - 1) * 1.2,
         "quats": torch.randn(N, 4, generator=g, device=cuda),
         "scales": torch.log(torch.rand(N, 3, generator=g, device=cuda) * 0.01 + 0.003),
         "opacities": torch.zeros(N, device=cuda)}
    feats = torch.randn(N, 16, generator=g, device=cuda).requires_grad_(True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(cuda)
    torch.cuda.reset_peak_memory_stats(cuda)
    out = render(p, cam, feats, backend="gsplat", bg=torch.zeros(16, device=cuda), return_depth=False)
    out.color.square().mean().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(cuda) - base
    assert out.visible.sum() > N // 2 and torch.isfinite(feats.grad).all()
    assert peak < 3 * 2**30, f"peak {peak / 2**20:.0f} MiB for one 1M-Gaussian view"


# ----------------------------------------------------------------------------- the pipeline on CUDA
@pytest.mark.gpu
def test_pipeline_on_cuda_with_resume(cuda, tmp_path):
    """rgb -> instance -> mapping -> query -> render -> eval on CUDA with the gsplat backend; then the
    instance and rgb stages resume from their final checkpoints (CUDA RNG state round trip)."""
    import eval_lerf
    import query
    import render as render_cli
    from preprocess.synthetic import generate_scene
    from train import main as train_main

    small = {"n_views": 16, "width": 96, "height": 72, "n_objects": 5, "n_labelled": 3, "n_points": 3000}
    data = tmp_path / "data"
    generate_scene(data, "tiny", seed=3, preset="clean", overrides=small, progress=False)
    run = tmp_path / "out" / "tiny"
    fast = ["--set", "rgb.iterations=500", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
            "--set", "rgb.densify.refine_start_iter=100", "--set", "rgb.densify.refine_stop_iter=350",
            "--set", "rgb.densify.reset_every=100000", "--set", "rgb.sh_degree_interval=150",
            "--set", "instance.iterations=600", "--set", "instance.preview_every=300",
            "--set", "instance.checkpoint_every=0", "--set", "run.progress=false",
            "--set", "run.device=cuda", "--set", "renderer.backend=auto"]
    for stage in ("rgb", "instance", "mapping"):
        assert train_main(["--stage", stage, "-s", str(data / "tiny"), "-m", str(run), *fast]) == 0, stage
    assert query.main(["-m", str(run)]) == 0
    assert render_cli.main(["-m", str(run)]) == 0
    assert eval_lerf.main(["--scenes", "tiny", "--label_root", str(data / "label"),
                           "--runs_root", str(run.parent)]) == 0
    scene = json.loads((run.parent / "metrics.json").read_text())["scenes"]["tiny"]
    assert scene["missing"] == 0 and scene["mIoU"] > 40, scene
    # resume: a stage whose done.json is gone restarts from its checkpoint (generator states from CUDA)
    for stage in ("instance", "rgb"):
        (run / stage / "done.json").unlink()
        assert train_main(["--stage", stage, "-s", str(data / "tiny"), "-m", str(run), *fast]) == 0, stage
        assert (run / stage / "done.json").is_file()
    shutil.rmtree(tmp_path / "out")
