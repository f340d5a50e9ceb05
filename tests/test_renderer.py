"""Tests of gaussian_renderer: projection vs gsplat's torch reference, tiled compositor vs a dense
twin (forward and backward), analytic single-Gaussian / occlusion / stop-rule cases, SH, empty views
and the DefaultStrategy hook-up."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dense_reference import dense_rasterize  # tests/ is on pytest's pythonpath (pyproject.toml)

from gaussian_renderer import BACKENDS, RenderOutput, render, resolve_backend  # noqa: E402
from gaussian_renderer.projection import covariance_3d, isect_tiles, project_gaussians  # noqa: E402
from gaussian_renderer.sh import SH_C0, SH_C1, eval_sh  # noqa: E402
from gaussian_renderer.torch_backend import MAX_ALPHA, T_EPS, rasterize_torch  # noqa: E402
from scene.cameras import Camera, intrinsics, look_at  # noqa: E402


# ----------------------------------------------------------------------------- helpers
def make_camera(W, H, f=40.0, cx=None, cy=None, center=(0.3, -0.2, -4.0), target=(0, 0, 0), up=(0, -1, 0)):
    R, t = look_at(center, target, up=up)
    K = intrinsics(f, f * 1.05, W / 2 + 0.37 if cx is None else cx, H / 2 - 0.21 if cy is None else cy)
    return Camera(uid=0, image_name="test", R=R, t=t, K=K, width=W, height=H)


def identity_camera(W, H, f, cx, cy):
    return Camera(uid=0, image_name="id", R=np.eye(3), t=np.zeros(3), K=intrinsics(f, f, cx, cy),
                  width=W, height=H)


def random_gaussians(N, seed, dtype=torch.float64, spread=1.2, opacity=(0.05, 0.95), scale=(0.03, 0.25)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(N, 3, generator=g, dtype=dtype) * 2 - 1) * spread       # [N,3]
    quats = torch.randn(N, 4, generator=g, dtype=dtype)                           # [N,4]
    lo, hi = scale
    scales = torch.rand(N, 3, generator=g, dtype=dtype) * (hi - lo) + lo         # [N,3] linear
    lo, hi = opacity
    opac = torch.rand(N, generator=g, dtype=dtype) * (hi - lo) + lo              # [N]
    return means, quats, scales, opac


def pipeline(means, quats, scales, opac, colors, cam, dense, bg=None, tile_size=16):
    """Project + (tiled | dense) rasterize. Returns color [H,W,D], alpha [H,W,1]."""
    dtype = means.dtype
    vm = cam.viewmat_tensor(dtype=dtype)
    K = cam.K_tensor(dtype=dtype)
    m2, con, z, radii = project_gaussians(means, quats, scales, vm, K, cam.width, cam.height)
    if dense:
        return dense_rasterize(m2, con, opac, colors, z, (radii > 0).all(-1), cam.width, cam.height, bg=bg)
    off, ids = isect_tiles(m2, radii, z, cam.width, cam.height, tile_size)
    return rasterize_torch(m2, con, opac, colors, off, ids, cam.width, cam.height, tile_size=tile_size, bg=bg)


def gdict(means, quats, scales, opac, sh0=None, shN=None):
    """render()'s parameter dict (log scales, logit opacities)."""
    N = means.shape[0]
    d = {"means": means, "quats": quats, "scales": torch.log(scales), "opacities": torch.logit(opac)}
    d["sh0"] = torch.zeros(N, 1, 3, dtype=means.dtype) if sh0 is None else sh0
    d["shN"] = torch.zeros(N, 0, 3, dtype=means.dtype) if shN is None else shN
    return d


# ----------------------------------------------------------------------------- projection
def test_projection_matches_gsplat_torch_reference():
    from gsplat.cuda._torch_impl import (_fully_fused_projection, _isect_offset_encode,
                                         _isect_tiles)
    W, H = 45, 37
    cam = make_camera(W, H)
    means, quats, scales, _ = random_gaussians(400, seed=1, spread=3.0)
    means[:20, 2] = -6.0                                                      # behind the camera
    vm, K = cam.viewmat_tensor(dtype=torch.float64), cam.K_tensor(dtype=torch.float64)
    m2, con, z, radii = project_gaussians(means, quats, scales, vm, K, W, H)
    cov = covariance_3d(quats, scales)
    r_ref, m_ref, z_ref, c_ref, _ = _fully_fused_projection(means, cov, vm[None], K[None], W, H)
    r_ref, m_ref, z_ref, c_ref = r_ref[0], m_ref[0], z_ref[0], c_ref[0]
    vis = (radii > 0).all(-1)
    assert radii.dtype == torch.int32
    assert torch.equal(radii, r_ref)
    assert 50 < vis.sum() < 400 - 20                 # some culled (behind, off-screen), many kept
    assert not vis[:20].any()
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m2[vis], m_ref[vis], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(con[vis], c_ref[vis], rtol=1e-10, atol=1e-12)

    # gradients through the projection agree with autograd through gsplat's reference
    params = [t.clone().requires_grad_() for t in (means, quats, scales)]
    wts = [torch.randn(vis.sum(), k, dtype=torch.float64) for k in (2, 3)]

    def loss(m2_, con_):
        return (m2_[vis] * wts[0]).sum() + (con_[vis] * wts[1]).sum()

    mine = torch.autograd.grad(loss(*project_gaussians(*params, vm, K, W, H)[:2]), params)
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
    params_ref = [t.clone().requires_grad_() for t in (means, quats, scales)]
    cov_ref = _quat_scale_to_covar_preci(params_ref[1], params_ref[2], compute_preci=False)[0]
    _, m_r, _, c_r, _ = _fully_fused_projection(params_ref[0], cov_ref, vm[None], K[None], W, H)
    ref = torch.autograd.grad(loss(m_r[0], c_r[0]), params_ref)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)

    # tile binning: same lists, same order as gsplat's isect_tiles + isect_offset_encode
    off, ids = isect_tiles(m2.float(), radii, z.float(), W, H, 16)
    _, isect_ref, ids_ref = _isect_tiles(m_ref[None].float(), r_ref[None], z_ref[None].float(), 16, 3, 3)
    off_ref = _isect_offset_encode(isect_ref, 1, 3, 3).flatten()
    assert torch.equal(off[:-1], off_ref.long()) and off[-1] == ids_ref.numel()
    assert torch.equal(ids, ids_ref.long())


# ----------------------------------------------------------------------------- analytic cases
def test_single_gaussian_peak_and_falloff():
    W, H, f, z0 = 32, 24, 50.0, 2.0
    cam = identity_camera(W, H, f, cx=16.5, cy=12.5)           # optical axis through pixel (12, 16)
    sx, sy, op = 0.06, 0.1, 0.7
    means = torch.tensor([[0.0, 0.0, z0]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    scales = torch.tensor([[sx, sy, 0.05]], dtype=torch.float64)
    col = torch.tensor([[0.2, 0.9, 0.5]], dtype=torch.float64)
    bg = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    out = render(gdict(means, quats, scales, torch.tensor([op], dtype=torch.float64)), cam, col,
                 backend="torch", bg=bg)
    # axis-aligned: Sigma_2d = diag((f sx / z)^2, (f sy / z)^2) + 0.3 I (gsplat eps2d)
    vxx, vyy = (f * sx / z0) ** 2 + 0.3, (f * sy / z0) ** 2 + 0.3
    assert out.color.shape == (H, W, 3) and out.alpha.shape == (H, W, 1)
    torch.testing.assert_close(out.color[12, 16], op * col[0] + (1 - op) * bg, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.depth[12, 16, 0], torch.tensor(z0, dtype=torch.float64))
    n_checked = 0
    for di, dj in [(0, 1), (1, 0), (2, 3), (-3, -2), (4, 0), (0, -5), (6, 1)]:
        a = op * math.exp(-0.5 * (dj * dj / vxx + di * di / vyy))
        if a < 1 / 255:
            exp_col, exp_a = bg, 0.0                               # below the alpha threshold
        else:
            exp_col, exp_a = a * col[0] + (1 - a) * bg, a
            n_checked += 1
        torch.testing.assert_close(out.color[12 + di, 16 + dj], exp_col, rtol=1e-12, atol=1e-12)
        assert abs(out.alpha[12 + di, 16 + dj, 0].item() - exp_a) < 1e-12
    assert n_checked >= 5
    assert out.radii[0, 0].tolist() == [math.ceil(3.33 * math.sqrt(vxx)), math.ceil(3.33 * math.sqrt(vyy))]

    # a 90 degree turn about the optical axis swaps the x and y extents
    q90 = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]], dtype=torch.float64)
    out90 = render(gdict(means, q90, scales, torch.tensor([op], dtype=torch.float64)), cam, col,
                   backend="torch", bg=bg)
    a = op * math.exp(-0.5 * (3 * 3 / vyy + 2 * 2 / vxx))        # pixel offset dx=3, dy=2
    torch.testing.assert_close(out90.color[14, 19], a * col[0] + (1 - a) * bg, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_occlusion_front_dominates(order):
    W, H = 20, 16
    cam = identity_camera(W, H, 40.0, cx=10.5, cy=8.5)             # axis through pixel (8, 10)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=torch.float64)[list(order)]
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64)
    scales = torch.full((2, 3), 0.1, dtype=torch.float64)
    opac = torch.tensor([0.99, 0.9], dtype=torch.float64)[list(order)]
    cols = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)[list(order)]
    out = render(gdict(means, quats, scales, opac), cam, cols, backend="torch")
    # front: alpha 0.99 -> T 0.01; back: alpha 0.9 -> next_T 1e-3 > 1e-4, still composited
    w_front, w_back = 0.99, 0.01 * 0.9
    torch.testing.assert_close(out.color[8, 10], torch.tensor([w_front, w_back, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out.alpha[8, 10, 0], torch.tensor(w_front + w_back, dtype=torch.float64))
    torch.testing.assert_close(out.depth[8, 10, 0],
                               torch.tensor((2 * w_front + 3 * w_back) / (w_front + w_back), dtype=torch.float64))


def test_stop_rule_is_exclusive():
    """Three opaque Gaussians: the second would bring T to 1e-6 <= 1e-4, so only the first draws."""
    W, H = 16, 16
    cam = identity_camera(W, H, 40.0, cx=8.5, cy=8.5)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.5], [0.0, 0.0, 3.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3)
    scales = torch.full((3, 3), 0.1)
    opac = torch.tensor([0.9995, 0.9995, 0.9995])                 # clamped to MAX_ALPHA
    cols = torch.eye(3)
    out = render(gdict(means, quats, scales, opac), cam, cols, backend="torch",
                 bg=torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out.color[8, 8], torch.tensor([MAX_ALPHA, 0.0, 1 - MAX_ALPHA]))
    torch.testing.assert_close(out.alpha[8, 8, 0], torch.tensor(MAX_ALPHA))


def test_alpha_and_color_bounds():
    W, H = 40, 30
    cam = make_camera(W, H)
    for seed, opac_range in [(3, (0.05, 0.95)), (4, (0.9, 0.9999))]:
        means, quats, scales, opac = random_gaussians(300, seed=seed, dtype=torch.float32, opacity=opac_range)
        cols = torch.rand(300, 3, generator=torch.Generator().manual_seed(seed))
        bg = torch.tensor([0.2, 0.7, 1.0])
        color, alpha = pipeline(means, quats, scales, opac, cols, cam, dense=False, bg=bg)
        assert (alpha >= 0).all() and (alpha <= 1 - T_EPS + 1e-6).all()
        assert (color >= -1e-6).all() and (color <= 1 + 1e-6).all()
    assert alpha.max() > 0.999                                        # the stop rule was reached


# ----------------------------------------------------------------------------- tiled vs dense
@pytest.mark.parametrize("D,W,H,ts,opac_range,scale_range", [
    (1, 48, 40, 16, (0.05, 0.95), (0.03, 0.25)),
    (3, 37, 29, 16, (0.5, 0.9999), (0.1, 0.4)),   # non-multiple-of-16 size, opaque: stop rule active
    (16, 48, 40, 8, (0.05, 0.95), (0.03, 0.25)),
])
def test_tiled_matches_dense_forward_backward(D, W, H, ts, opac_range, scale_range):
    cam = make_camera(W, H)
    means, quats, scales, opac = random_gaussians(200, seed=D, opacity=opac_range, scale=scale_range)
    g = torch.Generator().manual_seed(100 + D)
    feats = torch.rand(200, D, generator=g, dtype=torch.float64)
    bg = torch.rand(D, generator=g, dtype=torch.float64)
    w_col = torch.randn(H, W, D, generator=g, dtype=torch.float64)
    w_alpha = torch.randn(H, W, 1, generator=g, dtype=torch.float64)

    results = []
    for dense in (False, True):
        params = [t.clone().requires_grad_() for t in (means, quats, scales, opac, feats)]
        color, alpha = pipeline(*params, cam, dense=dense, bg=bg, tile_size=ts)
        loss = (color * w_col).sum() + (alpha * w_alpha).sum()
        results.append((color.detach(), alpha.detach(), torch.autograd.grad(loss, params)))
    (c_t, a_t, g_t), (c_d, a_d, g_d) = results
    assert a_d.max() > 0.5
    torch.testing.assert_close(c_t, c_d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a_t, a_d, rtol=1e-10, atol=1e-12)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "features"), g_t, g_d):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9 * b.abs().max().item(), msg=name)

    if opac_range[1] > 0.999:   # the stop rule changes many pixels of this scene
        m2, con, z, radii = project_gaussians(means, quats, scales, cam.viewmat_tensor(dtype=torch.float64),
                                              cam.K_tensor(dtype=torch.float64), W, H)
        c_nostop, _ = dense_rasterize(m2, con, opac, feats, z, (radii > 0).all(-1), W, H, bg=bg, t_eps=0.0)
        assert ((c_nostop - c_d).abs().amax(-1) > 1e-6).sum() > 100

    # tiny batches: lists split into chunks with the transmittance carried over -- same image
    m2, con, z, radii = project_gaussians(means, quats, scales, cam.viewmat_tensor(dtype=torch.float64),
                                          cam.K_tensor(dtype=torch.float64), W, H)
    off, ids = isect_tiles(m2, radii, z, W, H, ts)
    c_small, a_small = rasterize_torch(m2, con, opac, feats, off, ids, W, H, ts, bg=bg, max_pairs=ts * ts * 5)
    torch.testing.assert_close(c_small, c_d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a_small, a_d, rtol=1e-10, atol=1e-12)

    # float32: rounding may flip a pair across the 1e-4 stop threshold (changes a pixel by < 1e-4)
    m2, con, z, radii = project_gaussians(means.float(), quats.float(), scales.float(),
                                          cam.viewmat_tensor(), cam.K_tensor(), W, H)
    off, ids = isect_tiles(m2, radii, z, W, H, ts)
    c32, a32 = rasterize_torch(m2, con, opac.float(), feats.float(), off, ids, W, H, ts, bg=bg.float())
    torch.testing.assert_close(c32.double(), c_d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a32.double(), a_d, rtol=1e-4, atol=1e-4)


def test_checkpointed_batches_same_gradients():
    W, H = 33, 20
    cam = make_camera(W, H)
    means, quats, scales, opac = random_gaussians(80, seed=7)
    m2, con, z, radii = project_gaussians(means, quats, scales, cam.viewmat_tensor(dtype=torch.float64),
                                          cam.K_tensor(dtype=torch.float64), W, H)
    off, ids = isect_tiles(m2, radii, z, W, H, 16)
    cols = torch.rand(80, 2, dtype=torch.float64)
    grads = []
    for ck in (False, True):
        inp = [t.detach().clone().requires_grad_() for t in (m2, con, opac, cols)]
        c, a = rasterize_torch(*inp, off, ids, W, H, max_pairs=256 * 8, checkpoint=ck)
        grads.append(torch.autograd.grad((c ** 2).sum() + a.sum(), inp))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_gradcheck_rasterizer():
    W, H, ts = 8, 6, 4
    means2d = torch.tensor([[2.3, 2.1], [5.6, 3.2], [4.1, 4.4], [3.3, 1.7]], dtype=torch.float64)
    conics = torch.tensor([[0.12, 0.02, 0.10], [0.09, -0.03, 0.15], [0.2, 0.05, 0.08], [0.1, 0.0, 0.1]],
                          dtype=torch.float64)
    opac = torch.tensor([0.6, 0.75, 0.5, 0.8], dtype=torch.float64)
    cols = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.3, 0.6]], dtype=torch.float64)
    big = torch.full((4, 2), 20, dtype=torch.int32)          # every Gaussian listed in every tile
    off, ids = isect_tiles(means2d, big, torch.tensor([1.0, 2.0, 3.0, 1.5]), W, H, ts)
    assert off[-1] == 4 * 4
    bg = torch.tensor([0.25, 0.5], dtype=torch.float64)

    def f(m, c, o, col):
        img, alpha = rasterize_torch(m, c, o, col, off, ids, W, H, tile_size=ts, bg=bg)
        return img, alpha

    inputs = tuple(t.clone().requires_grad_() for t in (means2d, conics, opac, cols))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- empty views, SH, API
def test_empty_views():
    W, H = 20, 12
    cam = make_camera(W, H)
    means, quats, scales, opac = random_gaussians(10, seed=5, dtype=torch.float32)
    behind = means - torch.tensor(cam.R[2] * 8.0, dtype=torch.float32)   # 8 units behind the camera
    bg = torch.tensor([0.3, 0.4, 0.5])
    for g in (gdict(behind, quats, scales, opac), gdict(means[:0], quats[:0], scales[:0], opac[:0])):
        out = render(g, cam, backend="torch", bg=bg)
        assert torch.equal(out.color, bg.expand(H, W, 3))
        assert torch.equal(out.alpha, torch.zeros(H, W, 1)) and torch.equal(out.depth, torch.zeros(H, W, 1))
        assert not out.visible.any() and out.means2d.shape == (1, g["means"].shape[0], 2)


def test_sh_degree0_and_degree1_closed_form():
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(5, 16, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(5, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(eval_sh(0, dirs, coeffs), SH_C0 * coeffs[:, 0])
    u = dirs / dirs.norm(dim=-1, keepdim=True)
    x, y, z = u[:, :1], u[:, 1:2], u[:, 2:3]
    expect1 = SH_C0 * coeffs[:, 0] - SH_C1 * y * coeffs[:, 1] + SH_C1 * z * coeffs[:, 2] - SH_C1 * x * coeffs[:, 3]
    torch.testing.assert_close(eval_sh(1, dirs * 3.0, coeffs), expect1)
    from gsplat.cuda._torch_impl import _spherical_harmonics
    for deg in (2, 3):
        torch.testing.assert_close(eval_sh(deg, dirs, coeffs), _spherical_harmonics(deg, dirs, coeffs))
    with pytest.raises(ValueError, match="coeffs"):
        eval_sh(3, dirs, coeffs[:, :9])


def test_render_sh_colour_uses_view_direction():
    W, H = 16, 16
    cam = identity_camera(W, H, 40.0, cx=8.5, cy=8.5)
    cam = Camera(uid=0, image_name="c", R=np.eye(3), t=np.array([0.0, 0.0, 1.0]), K=cam.K, width=W, height=H)
    # camera centre = -R^T t = (0,0,-1); Gaussian at (0,0,1): view dir +z, depth 2
    means = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    sh0 = torch.tensor([[[0.4, -0.2, 0.1]]], dtype=torch.float64)
    shN = torch.tensor([[[0.0, 0.0, 0.0], [0.3, -0.5, -2.0], [9.0, 9.0, 9.0]]], dtype=torch.float64)
    g = gdict(means, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), torch.full((1, 3), 0.1, dtype=torch.float64),
              torch.tensor([0.8], dtype=torch.float64), sh0=sh0, shN=shN)
    out = render(g, cam, backend="torch", sh_degree=1)
    rgb = torch.clamp_min(SH_C0 * sh0[0, 0] + SH_C1 * 1.0 * shN[0, 1] + 0.5, 0.0)   # z = 1 term only
    torch.testing.assert_close(out.color[8, 8], 0.8 * rgb)
    assert out.color[8, 8, 2] == 0.0                                                  # clamped channel
    with pytest.raises(ValueError, match="sh_degree"):
        render(g, cam, backend="torch", sh_degree=2)


def test_default_strategy_hookup():
    from gsplat.strategy import DefaultStrategy
    W, H = 32, 24
    cam = make_camera(W, H)
    means, quats, scales, opac = random_gaussians(60, seed=9, dtype=torch.float32)
    means[:5] -= torch.tensor(cam.R[2] * 8.0, dtype=torch.float32)             # 5 behind the camera
    params = {k: torch.nn.Parameter(v) for k, v in gdict(means, quats, scales, opac,
                                                        sh0=torch.rand(60, 1, 3), shN=torch.zeros(60, 3, 3)).items()}
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy()
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    out = render(params, cam, backend="torch")
    assert isinstance(out, RenderOutput) and out.info["radii"].shape == (1, 60, 2)
    strategy.step_pre_backward(params, optimizers, state, step=0, info=out.info)
    target = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1))
    ((out.color - target) ** 2).mean().backward()
    strategy.step_post_backward(params, optimizers, state, step=0, info=out.info, packed=False)
    vis = out.visible
    assert 20 < vis.sum() <= 55 and not vis[:5].any()
    grad = out.means2d.grad[0]                                            # [N,2] pixel-space gradient
    expect = (grad * torch.tensor([W / 2.0, H / 2.0])).norm(dim=-1)
    assert (state["grad2d"][vis] > 0).all() and (state["grad2d"][~vis] == 0).all()
    torch.testing.assert_close(state["grad2d"][vis], expect[vis])
    assert torch.equal(state["count"], vis.float())


def test_backend_resolution_and_errors():
    assert set(BACKENDS) == {"auto", "torch", "cpp", "gsplat"}
    assert resolve_backend("auto", "cpu") in ("cpp", "torch")
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("vulkan", "cpu")
    cam = make_camera(8, 8)
    means, quats, scales, opac = random_gaussians(3, seed=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="means"):
        render(gdict(means[:, :2], quats, scales, opac), cam, backend="torch")
    with pytest.raises(ValueError, match="features"):
        render(gdict(means, quats, scales, opac), cam, torch.zeros(4, 3), backend="torch")
    with pytest.raises(ValueError, match="bg"):
        render(gdict(means, quats, scales, opac), cam, backend="torch", bg=[0.0, 1.0])
    try:
        import gaussian_renderer.gsplat_backend  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="gsplat"):
            render(gdict(means, quats, scales, opac), cam, backend="gsplat")
