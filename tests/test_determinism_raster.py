"""The C++ rasterizer's gradients are bit-identical run to run, whatever the OpenMP scheduling.

The scene is built so that order-dependent summation would show: a few thousand Gaussians, each
spanning several 8x8 tiles (a Gaussian's gradient is a sum over its tiles; with three or more terms
the float result depends on the order in which the tiles' contributions are added).
"""
from __future__ import annotations

import threading

import pytest
import torch

from gaussian_renderer import cpp_backend
from gaussian_renderer.projection import isect_tiles
from gaussian_renderer.torch_backend import rasterize_torch

if not cpp_backend.available():
    pytest.skip(f"C++ rasterizer unavailable: {cpp_backend.unavailable_reason()}",
                allow_module_level=True)

from gaussian_renderer.cpp_backend import rasterize_cpp  # noqa: E402

W, H, TILE = 96, 72, 8
REPEATS = 6


def make_scene(n, D, seed):
    """n random Gaussians of 2..8 px std (overlapping, several tiles each), binned with isect_tiles."""
    g = torch.Generator().manual_seed(seed)
    means2d = (torch.rand(n, 2, generator=g) * 1.1 - 0.05) * torch.tensor([W, H])
    L = torch.randn(n, 2, 2, generator=g) * 3.0
    cov = L @ L.transpose(1, 2) + 4.0 * torch.eye(2)                          # [n,2,2]
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], dim=-1)  # [n,3]
    opacities = 0.05 + 0.5 * torch.rand(n, generator=g)   # mostly translucent: deep lists
    colors = torch.rand(n, D, generator=g)
    depths = torch.rand(n, generator=g)
    radii = torch.ceil(3.0 * torch.sqrt(torch.stack([cov[:, 0, 0], cov[:, 1, 1]], -1))).int()
    offsets, ids = isect_tiles(means2d, radii, depths, W, H, TILE)
    bg = torch.rand(D, generator=g)
    w_color = torch.randn(H, W, D, generator=g)
    w_alpha = torch.randn(H, W, 1, generator=g)
    return (means2d, conics, opacities, colors, offsets, ids, bg), (w_color, w_alpha)


def grads(fn, scene, weights):
    """[color, alpha, d means2d, d conics, d opacities, d colors, d bg] of a weighted loss."""
    m2, con, op, col, off, ids, bg = scene
    leaves = [t.clone().requires_grad_() for t in (m2, con, op, col, bg)]
    color, alpha = fn(*leaves[:4], off, ids, W, H, tile_size=TILE, bg=leaves[4])
    ((color * weights[0]).sum() + (alpha * weights[1]).sum()).backward()
    return [color.detach(), alpha.detach()] + [t.grad for t in leaves]


def assert_identical(a, b, what):
    names = ["color", "alpha", "d_means2d", "d_conics", "d_opacities", "d_colors", "d_bg"]
    for name, x, y in zip(names, a, b):
        diff = (x - y).abs().max().item()
        assert torch.equal(x, y), f"{what}: {name} differs (max |diff| {diff:.3g})"


@pytest.fixture(scope="module", params=[3, 16], ids=["D3", "D16"])
def scene(request):
    s, w = make_scene(3000, request.param, seed=request.param)
    m2, off = s[0], s[4]
    per_gauss = torch.bincount(s[5], minlength=m2.shape[0])
    assert per_gauss.float().mean() > 3 and int(per_gauss.max()) >= 9   # multi-tile Gaussians
    return s, w


@pytest.fixture
def two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(prev)


def test_repeated_backward_is_bit_identical(scene, two_threads):
    s, w = scene
    ref = grads(rasterize_cpp, s, w)
    for _ in range(REPEATS):
        assert_identical(grads(rasterize_cpp, s, w), ref, "repeat")


def test_bit_identical_under_concurrent_load(scene, two_threads):
    """A busy Python thread and a thread running torch ops perturb the OpenMP scheduling."""
    s, w = scene
    ref = grads(rasterize_cpp, s, w)
    stop = threading.Event()

    def busy_python():
        x = 0
        while not stop.is_set():
            x = (x * 31 + 7) % 1000003

    def busy_torch():
        a = torch.randn(256, 256)
        while not stop.is_set():
            a = torch.tanh(a @ a.T * 1e-2)

    workers = [threading.Thread(target=f, daemon=True) for f in (busy_python, busy_torch)]
    for t in workers:
        t.start()
    try:
        for _ in range(REPEATS):
            assert_identical(grads(rasterize_cpp, s, w), ref, "under load")
    finally:
        stop.set()
        for t in workers:
            t.join()


def test_bit_identical_across_thread_counts(scene):
    s, w = scene
    prev = torch.get_num_threads()
    try:
        outs = {}
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            outs[nt] = grads(rasterize_cpp, s, w)
    finally:
        torch.set_num_threads(prev)
    assert_identical(outs[2], outs[1], "2 vs 1 threads")
    assert_identical(outs[3], outs[1], "3 vs 1 threads")


def test_still_matches_torch_reference(scene):
    """Same tolerance as tests/test_cpp_backend.py: rel 1e-4 of max(1, max |ref|)."""
    s, w = scene
    names = ["color", "alpha", "d_means2d", "d_conics", "d_opacities", "d_colors", "d_bg"]
    for name, got, ref in zip(names, grads(rasterize_cpp, s, w), grads(rasterize_torch, s, w)):
        assert torch.isfinite(got).all(), name
        err = (got - ref).abs().max().item()
        scale = max(1.0, ref.abs().max().item())
        assert err <= 1e-4 * scale, f"{name}: max error {err:.3g} > 1e-4 * {scale:.3g}"
        assert ref.abs().max() > 1e-3, f"{name}: trivial reference"


@pytest.mark.parametrize("budget", ["4096", "200000"])
def test_chunked_backward_is_bit_identical(scene, two_threads, monkeypatch, budget):
    """A slot budget below the scene's needs splits the backward into chunks of tiles (large
    scenes): same bits as one chunk. 4096 bytes: about one tile per chunk."""
    s, w = scene
    ref = grads(rasterize_cpp, s, w)
    monkeypatch.setenv("COS3D_RASTER_SLOT_BYTES", budget)
    assert_identical(grads(rasterize_cpp, s, w), ref, f"budget {budget} bytes")
