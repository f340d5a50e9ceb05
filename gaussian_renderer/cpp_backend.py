"""C++/OpenMP CPU rasterizer: same contract as ``torch_backend.rasterize_torch``, 20-50x faster.

The kernel (``csrc/rasterize.cpp``) composites each 16x16 tile on one OpenMP thread, each
Gaussian over the tile rows its ellipse reaches (vectorised over the rows' pixels), and has a
hand-written backward (back-to-front, as gsplat 1.5.3's CUDA kernel). It is built on first use
(``extension.py``: g++ and ninja, ~10 s, cached under a hash of the source and flags). If the build
fails, :func:`available` returns False and logs one warning with the reason;
``render(..., backend="auto")`` then falls back to the torch backend.

Data formats (CPU tensors; the kernel computes in float32 and rejects other float dtypes with a
ValueError -- use the torch backend for float64, e.g. in gradchecks):

* means2d [N,2] pixels, conics [N,3] (a, b, c of the inverse 2D covariance [[a,b],[b,c]]),
  opacities [N] in [0,1], colors [N,D] (any D), bg [D] or None (zeros);
* tile_offsets [n_tiles+1] int64 CSR and flatten_ids [M] int64, from ``projection.isect_tiles``;
* returns color [H,W,D] (composited over bg) and alpha [H,W,1].

The constants (alpha threshold 1/255, max alpha, transmittance 1e-4) are gsplat's, shared with
``torch_backend``. Threads: ``torch.get_num_threads()``; the image and the gradients are
bit-identical for any thread count and from run to run (the backward sums in a fixed order).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .extension import Extension
from .torch_backend import MAX_ALPHA, check_raster_inputs

_TILE_SIZES = (8, 16, 32)
_EXT = Extension(Path(__file__).resolve().parent / "csrc" / "rasterize.cpp", "cos3d_raster", "rasterize_fwd",
                 what="rasterizer", fallback="use the torch backend")


def available() -> bool:
    """True if the C++ extension builds and loads (built on the first call, then cached; never raises)."""
    return _EXT.available()


def unavailable_reason() -> str:
    """Why :func:`available` is False ('' when it is True)."""
    return _EXT.unavailable_reason()


def _ops():
    return _EXT.ops()


class _RasterizeCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, bg, tile_offsets, flatten_ids,
                width, height, tile_size):
        ops = _ops()
        D = colors.shape[1]
        color = torch.empty(height, width, D, dtype=torch.float32)   # [H,W,D]
        T = torch.empty(height, width, dtype=torch.float32)          # [H,W] final transmittance
        last = torch.empty(height, width, dtype=torch.int32)         # [H,W] last contributor (tile-local)
        ext = torch.empty(colors.shape[0], 8, dtype=torch.float32)   # [N,8] packed per-Gaussian record
        ops.rasterize_fwd(means2d, conics, opacities, colors, bg, tile_offsets, flatten_ids,
                          width, height, tile_size, MAX_ALPHA, torch.get_num_threads(),
                          color, T, last, ext)
        ctx.save_for_backward(means2d, conics, opacities, colors, bg, tile_offsets, flatten_ids,
                              ext, T, last)
        ctx.dims = (width, height, tile_size)
        alpha = (1.0 - T).unsqueeze(-1)                               # [H,W,1]
        return color, alpha

    @staticmethod
    @once_differentiable  # hand-written backward: no double backward
    def backward(ctx, v_color, v_alpha):
        (means2d, conics, opacities, colors, bg, tile_offsets, flatten_ids, ext, T,
         last) = ctx.saved_tensors
        width, height, tile_size = ctx.dims
        N, D = colors.shape
        v_color = (torch.zeros(height, width, D) if v_color is None
                   else v_color.to(torch.float32).contiguous())        # [H,W,D]
        v_alpha = (torch.zeros(height, width) if v_alpha is None
                   else v_alpha.to(torch.float32).reshape(height, width).contiguous())  # [H,W]
        v_means2d = torch.empty(N, 2)
        v_conics = torch.empty(N, 3)
        v_opac = torch.empty(N)
        v_colors = torch.empty(N, D)
        _ops().rasterize_bwd(means2d, conics, opacities, colors, bg, tile_offsets, flatten_ids,
                             ext, T, last, v_color, v_alpha, width, height, tile_size, MAX_ALPHA,
                             torch.get_num_threads(), v_means2d, v_conics, v_opac, v_colors)
        v_bg = None
        if ctx.needs_input_grad[4]:  # out = sum + T_final * bg
            v_bg = (T.unsqueeze(-1) * v_color).sum(dim=(0, 1))        # [D]
        return v_means2d, v_conics, v_opac, v_colors, v_bg, None, None, None, None, None


def rasterize_cpp(
    means2d: Tensor,       # [N, 2] pixel positions
    conics: Tensor,        # [N, 3] (a, b, c) inverse 2D covariance
    opacities: Tensor,     # [N] activated, in [0, 1]
    colors: Tensor,        # [N, D] any D
    tile_offsets: Tensor,  # [n_tiles + 1] int64 CSR offsets (isect_tiles)
    flatten_ids: Tensor,   # [M] int64 Gaussian ids, depth-sorted per tile
    width: int,
    height: int,
    tile_size: int = 16,
    bg: Optional[Tensor] = None,  # [D] or None (= zeros)
) -> tuple[Tensor, Tensor]:
    """Render ``color [H,W,D]`` (composited over ``bg``) and ``alpha [H,W,1]`` with the C++ kernel.

    Differentiable w.r.t. means2d, conics, opacities, colors and bg (hand-written backward).
    CPU float32 only (ValueError otherwise); tile_size 8, 16 or 32."""
    width, height, tile_size = int(width), int(height), int(tile_size)
    if bg is not None:
        if not isinstance(bg, Tensor):
            bg = torch.as_tensor(bg, dtype=colors.dtype, device=colors.device)
    check_raster_inputs(means2d, conics, opacities, colors, tile_offsets, flatten_ids,
                        width, height, tile_size, bg)
    for name, t in (("means2d", means2d), ("conics", conics), ("opacities", opacities),
                    ("colors", colors), ("bg", bg)):
        if t is None:
            continue
        if t.device.type != "cpu":
            raise ValueError(f"rasterize_cpp: {name} is on {t.device}; the C++ backend runs on the CPU")
        if t.dtype != torch.float32:
            raise ValueError(f"rasterize_cpp: {name} must be float32, got {t.dtype} "
                             "(the kernel is float32; use backend='torch' for other dtypes)")
    if tile_size not in _TILE_SIZES:
        raise ValueError(f"rasterize_cpp: tile_size must be one of {_TILE_SIZES}, got {tile_size}")
    N, D = colors.shape
    M = flatten_ids.numel()
    tile_offsets = tile_offsets.to(device="cpu", dtype=torch.int64).contiguous()
    flatten_ids = flatten_ids.to(device="cpu", dtype=torch.int64).contiguous()
    # the kernel indexes raw memory: refuse lists that point outside the arrays
    if int(tile_offsets[0]) != 0 or int(tile_offsets[-1]) != M or bool((tile_offsets.diff() < 0).any()):
        raise ValueError(f"rasterize_cpp: tile_offsets must rise from 0 to len(flatten_ids)={M}")
    if M > 0 and (int(flatten_ids.min()) < 0 or int(flatten_ids.max()) >= N):
        raise ValueError(f"rasterize_cpp: flatten_ids must lie in [0, {N}), got "
                         f"[{int(flatten_ids.min())}, {int(flatten_ids.max())}]")
    if M >= 2 ** 31 or N >= 2 ** 31:  # tile-local indices and the backward's Gaussian ids are int32
        raise ValueError(f"rasterize_cpp: too many intersections ({M}) or Gaussians ({N})")
    bg_vec = torch.zeros(D) if bg is None else bg                       # [D]
    return _RasterizeCpp.apply(means2d.contiguous(), conics.contiguous(), opacities.contiguous(),
                               colors.contiguous(), bg_vec.contiguous(), tile_offsets, flatten_ids,
                               width, height, tile_size)
