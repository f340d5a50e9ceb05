"""The C++ CPU rasterizer against the torch reference (forward and gradients) and hand-built cases.

Skipped as a whole if the extension cannot be built here (no compiler / ninja); the reason is shown.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gaussian_renderer import cpp_backend
from gaussian_renderer.projection import isect_tiles, project_gaussians
from gaussian_renderer.torch_backend import MAX_ALPHA, rasterize_torch

if not cpp_backend.available():
    pytest.skip(f"C++ rasterizer unavailable: {cpp_backend.unavailable_reason()}",
                allow_module_level=True)

from gaussian_renderer.cpp_backend import rasterize_cpp  # noqa: E402


def random_2d_scene(n, width, height, D, seed, opacity=None, scale=(0.7, 2.5), tile_size=16):
    """Random 2D Gaussians in (and a little outside) the image, binned with isect_tiles.

    Returns (means2d [n,2], conics [n,3], opacities [n], colors [n,D], tile_offsets, flatten_ids)."""
    g = torch.Generator().manual_seed(seed)
    means2d = (torch.rand(n, 2, generator=g) * 1.2 - 0.1) * torch.tensor([width, height])
    L = torch.randn(n, 2, 2, generator=g) * (scale[1] - scale[0]) / 2
    cov = L @ L.transpose(1, 2) + scale[0] ** 2 * torch.eye(2)                 # [n,2,2]
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], dim=-1)  # [n,3]
    if opacity is None:
        opacities = torch.rand(n, generator=g)
    else:
        opacities = torch.full((n,), float(opacity))
    colors = torch.rand(n, D, generator=g)
    depths = torch.rand(n, generator=g)
    radii = torch.ceil(3.33 * torch.sqrt(torch.stack([cov[:, 0, 0], cov[:, 1, 1]], -1))).int()
    offsets, ids = isect_tiles(means2d, radii, depths, width, height, tile_size)
    return means2d, conics, opacities, colors, offsets, ids


def render_both(scene, width, height, bg=None, tile_size=16, seed=0):
    """Forward + backward of both backends with the same random output weights.

    Returns a list of (name, cpp value, torch value) pairs."""
    m2, con, op, col, off, ids = scene
    g = torch.Generator().manual_seed(seed + 1000)
    D = col.shape[1]
    w_color = torch.randn(height, width, D, generator=g)
    w_alpha = torch.randn(height, width, 1, generator=g)
    out = {}
    for name, fn in (("cpp", rasterize_cpp), ("torch", rasterize_torch)):
        leaves = [t.clone().requires_grad_() for t in (m2, con, op, col)]
        bg_leaf = None if bg is None else bg.clone().requires_grad_()
        color, alpha = fn(*leaves, off, ids, width, height, tile_size=tile_size, bg=bg_leaf)
        ((color * w_color).sum() + (alpha * w_alpha).sum()).backward()
        grads = [t.grad for t in leaves] + ([] if bg is None else [bg_leaf.grad])
        out[name] = [color.detach(), alpha.detach()] + grads
    names = ["color", "alpha", "d_means2d", "d_conics", "d_opacities", "d_colors", "d_bg"]
    return list(zip(names, out["cpp"], out["torch"]))


def assert_close(name, got, ref, rel=1e-4):
    """max |got - ref| <= rel * max(1, max |ref|): float32 summation order differs between backends."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got - ref).abs().max().item() if ref.numel() else 0.0
    scale = max(1.0, ref.abs().max().item() if ref.numel() else 0.0)
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} * {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# agreement with the torch reference
@pytest.mark.parametrize("D,width,height,seed", [
    (1, 37, 29, 0), (3, 70, 45, 1), (3, 50, 33, 2), (16, 41, 35, 3),
])
def test_matches_torch_random(D, width, height, seed):
    scene = random_2d_scene(300, width, height, D, seed)
    bg = torch.rand(D, generator=torch.Generator().manual_seed(seed))
    results = render_both(scene, width, height, bg=bg, seed=seed)
    for name, got, ref in results:
        assert_close(name, got, ref)
    # not a trivial scene: opaque somewhere, and every gradient is non-zero somewhere
    assert results[1][2].max() > 0.9
    assert all(ref.abs().max() > 1e-3 for _, _, ref in results[2:])


def test_gaussians_across_the_tile_middle():
    """Small Gaussians swept across the middle of a 16-wide tile, where the kernel switches between
    half rows (8 columns) and full rows: the image and every gradient match the torch reference, and
    the pixels with any alpha are exactly the reference's (none dropped at the switch)."""
    W, H = 32, 16
    for k, x in enumerate(torch.arange(2.0, 14.01, 0.25).tolist()):
        for conic in ([0.7, 0.0, 0.7], [0.9, 0.5, 0.45], [2.0, -0.3, 0.1]):   # round, rotated, a thin streak
            m2 = torch.tensor([[x, 7.3 + 0.1 * (k % 3)]])
            con, op, col = torch.tensor([conic]), torch.tensor([0.95]), torch.tensor([[0.2, 0.5, 0.9]])
            radii = torch.tensor([[6, 8]], dtype=torch.int32)
            off, ids = isect_tiles(m2, radii, torch.ones(1), W, H, 16)
            results = render_both((m2, con, op, col, off, ids), W, H)
            for name, got, ref in results:
                assert_close(f"x={x} conic={conic} {name}", got, ref)
            got_a, ref_a = results[1][1], results[1][2]
            assert torch.equal(got_a > 0, ref_a > 0), f"x={x} conic={conic}: reached pixels differ"


@pytest.mark.parametrize("tile_size", [8, 32])
def test_other_tile_sizes(tile_size):
    scene = random_2d_scene(200, 45, 38, 3, seed=5, tile_size=tile_size)
    for name, got, ref in render_both(scene, 45, 38, tile_size=tile_size):
        assert_close(name, got, ref)


def test_alpha_clamp_and_threshold():
    """Opacity 1 (alpha clamped at MAX_ALPHA at the centre: no geometry gradient there) and opacity
    just above 1/255 (most pixels fall under the threshold and are skipped)."""
    for opacity, seed in ((1.0, 7), (0.0045, 8), (MAX_ALPHA, 9)):
        scene = random_2d_scene(120, 40, 30, 3, seed, opacity=opacity)
        results = render_both(scene, 40, 30, bg=torch.tensor([0.2, 0.4, 0.6]), seed=seed)
        for name, got, ref in results:
            assert_close(name, got, ref)
        if opacity == 0.0045:  # faint: alpha <= opacity everywhere
            assert results[1][1].max() < 0.2


def test_early_stop_many_opaque_layers():
    """40 wide, nearly opaque layers: every pixel stops (T <= 1e-4) after a few of them."""
    n, W, H = 40, 35, 21
    g = torch.Generator().manual_seed(11)
    m2 = torch.tensor([W / 2, H / 2]) + torch.randn(n, 2, generator=g)
    con = torch.tensor([[0.002, 0.0, 0.002]]).repeat(n, 1)       # std ~22 px: covers the image
    op = 0.85 + 0.1 * torch.rand(n, generator=g)
    col = torch.rand(n, 3, generator=g)
    radii = torch.full((n, 2), 80, dtype=torch.int32)
    off, ids = isect_tiles(m2, radii, torch.arange(n, dtype=torch.float32), W, H, 16)
    results = render_both((m2, con, op, col, off, ids), W, H, bg=torch.ones(3))
    for name, got, ref in results:
        assert_close(name, got, ref)
    alpha = results[1][1]
    # each pixel stopped with T > 1e-4 and T (1 - alpha_next) <= 1e-4, alpha_next <= 0.95
    assert (alpha > 1 - 2e-3).all() and (alpha < 1 - 1e-4).all()
    d_colors = results[5][1]
    assert (d_colors[-10:] == 0).all()    # the back layers are never reached


def test_through_projection():
    """A small 3D scene through project_gaussians + isect_tiles (the render() pipeline)."""
    g = torch.Generator().manual_seed(3)
    n, W, H = 400, 53, 40
    z = 2 + 3 * torch.rand(n, generator=g)
    means = torch.cat([(torch.rand(n, 2, generator=g) - 0.5) * z[:, None], z[:, None]], dim=1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.02), math.log(0.15), generator=g))
    K = torch.tensor([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    m2, con, depth, radii = project_gaussians(means, quats, scales, torch.eye(4), K, W, H)
    off, ids = isect_tiles(m2, radii, depth, W, H, 16)
    op = torch.sigmoid(torch.randn(n, generator=g) * 2)
    col = torch.rand(n, 3, generator=g)
    for name, got, ref in render_both((m2.detach(), con.detach(), op, col, off, ids), W, H):
        assert_close(name, got, ref)


# ---------------------------------------------------------------------------------------------
# hand-built cases (independent of the torch reference)
def test_single_gaussian_analytic():
    """One isotropic Gaussian centred on pixel (2, 3): alpha = o exp(-r^2 / (2 s^2)) per pixel."""
    W, H, s2, o = 7, 5, 2.0, 0.6
    m2 = torch.tensor([[3.5, 2.5]])                       # centre of pixel row 2, column 3
    con = torch.tensor([[1 / s2, 0.0, 1 / s2]])
    op = torch.tensor([o])
    col = torch.tensor([[1.0, 0.5]])
    bg = torch.tensor([0.1, 0.2])
    off = torch.zeros(2, dtype=torch.long)
    off[1] = 1
    ids = torch.zeros(1, dtype=torch.long)
    color, alpha = rasterize_cpp(m2, con, op, col, off, ids, W, H, bg=bg)
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    a = o * torch.exp(-((xx - 3.5) ** 2 + (yy - 2.5) ** 2) / (2 * s2))
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    torch.testing.assert_close(alpha[..., 0], a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(color, a[..., None] * col[0] + (1 - a[..., None]) * bg,
                               rtol=1e-6, atol=1e-7)
    assert alpha[2, 3, 0].item() == pytest.approx(o, rel=1e-7)


def test_two_layers_and_gradients_analytic():
    """Two Gaussians over one pixel (front o1 c1, back o2 c2), 1x1 image at the centres:
    C = o1 c1 + (1 - o1) o2 c2 + (1 - o1)(1 - o2) bg, with closed-form gradients."""
    o1, o2, c1, c2, bg = 0.3, 0.5, 0.8, 0.4, 0.25
    m2 = torch.tensor([[0.5, 0.5], [0.5, 0.5]], requires_grad=True)
    con = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]], requires_grad=True)
    op = torch.tensor([o1, o2], requires_grad=True)
    col = torch.tensor([[c1], [c2]], requires_grad=True)
    off = torch.tensor([0, 2])
    ids = torch.tensor([0, 1])
    color, alpha = rasterize_cpp(m2, con, op, col, off, ids, 1, 1, bg=torch.tensor([bg]))
    C = o1 * c1 + (1 - o1) * o2 * c2 + (1 - o1) * (1 - o2) * bg
    assert color.item() == pytest.approx(C, rel=1e-6)
    assert alpha.item() == pytest.approx(1 - (1 - o1) * (1 - o2), rel=1e-6)
    (color.sum() + 2 * alpha.sum()).backward()
    # d/d o1 = c1 - o2 c2 - (1 - o2) bg + 2 (1 - o2);  d/d o2 = (1 - o1)(c2 - bg) + 2 (1 - o1)
    assert op.grad[0].item() == pytest.approx(c1 - o2 * c2 - (1 - o2) * bg + 2 * (1 - o2), rel=1e-5)
    assert op.grad[1].item() == pytest.approx((1 - o1) * (c2 - bg) + 2 * (1 - o1), rel=1e-5)
    assert col.grad[:, 0].tolist() == pytest.approx([o1, (1 - o1) * o2], rel=1e-6)
    # at the exact centre d = 0: no gradient for means (d sigma/d mean = 0) or conics (d^2 = 0)
    assert m2.grad.abs().max().item() == 0.0 and con.grad.abs().max().item() == 0.0


def test_empty_returns_background():
    D, W, H = 3, 20, 17
    bg = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    n_tiles = 2 * 2
    for n in (0, 5):                                      # no Gaussians / none binned
        m2 = torch.rand(n, 2, requires_grad=True)
        con = torch.ones(n, 3)
        color, alpha = rasterize_cpp(m2, con, torch.rand(n), torch.rand(n, D),
                                     torch.zeros(n_tiles + 1, dtype=torch.long),
                                     torch.zeros(0, dtype=torch.long), W, H, bg=bg)
        assert torch.equal(color, bg.detach().expand(H, W, D))
        assert torch.equal(alpha, torch.zeros(H, W, 1))
        color.sum().backward()
        assert torch.allclose(bg.grad, torch.full((D,), float(W * H)))
        if n:
            assert torch.equal(m2.grad, torch.zeros(n, 2))
        bg.grad = None


def test_thread_count_does_not_change_results():
    scene = random_2d_scene(400, 64, 48, 3, seed=21)
    prev = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            leaves = [t.clone().requires_grad_() for t in scene[:4]]
            color, alpha = rasterize_cpp(*leaves, *scene[4:], 64, 48)
            (color.sum() + alpha.sum()).backward()
            outs.append([color.detach(), alpha.detach()] + [t.grad for t in leaves])
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(outs[0], outs[1]):   # the backward sums in a fixed order: same bits
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# bad input
def test_bad_input_errors():
    m2, con, op, col, off, ids = random_2d_scene(10, 20, 20, 3, seed=0)
    with pytest.raises(ValueError, match="float32"):
        rasterize_cpp(m2.double(), con, op, col, off, ids, 20, 20)
    with pytest.raises(ValueError, match="conics"):
        rasterize_cpp(m2, con[:, :2], op, col, off, ids, 20, 20)
    with pytest.raises(ValueError, match="tile_size"):
        rasterize_cpp(m2, con, op, col, isect_tiles(m2, torch.ones(10, 2, dtype=torch.int32) * 3,
                                                    torch.rand(10), 20, 20, 12)[0], ids, 20, 20,
                      tile_size=12)
    with pytest.raises(ValueError, match="tile_offsets"):
        rasterize_cpp(m2, con, op, col, off[:-1], ids, 20, 20)
    if ids.numel():
        bad = ids.clone()
        bad[0] = 10
        with pytest.raises(ValueError, match="flatten_ids"):
            rasterize_cpp(m2, con, op, col, off, bad, 20, 20)


def test_failed_build_falls_back(tmp_path):
    """No usable compiler: available() is False with the reason, one warning, auto -> torch."""
    code = (
        "import logging, warnings; logging.basicConfig()\n"
        "from gaussian_renderer import cpp_backend, resolve_backend\n"
        "print('AVAILABLE', cpp_backend.available(), cpp_backend.available())\n"
        "print('REASON', cpp_backend.unavailable_reason())\n"
        "print('AUTO', resolve_backend('auto', 'cpu'))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), COS3D_EXT_CACHE=str(tmp_path))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "AVAILABLE False False" in res.stdout
    assert "REASON RuntimeError" in res.stdout and "no-such-compiler" in res.stdout
    assert "AUTO torch" in res.stdout
    assert res.stderr.count("the C++ rasterizer could not be built") == 1
