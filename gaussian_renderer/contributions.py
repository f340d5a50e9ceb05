"""Per-pixel compositing weights of a few pixels: which Gaussians make a pixel, and how much.

``pixel_contributions(gaussians, camera, pixels)`` returns, for each asked pixel, the Gaussians with
the largest compositing weights ``w_i = alpha_i * T_i`` (``T_i`` the transmittance in front of
Gaussian i), with exactly the rules of the renderer (gsplat 1.5.3 maths, ``torch_backend``):

* the projection of ``projection.project_gaussians`` (EWA, +0.3 dilation, culling);
* a Gaussian takes part in a pixel iff it is binned to the pixel's tile (``isect_tiles``' bounds:
  ``[floor(m/ts - r/ts), ceil(m/ts + r/ts))`` per axis, both radii > 0), front to back by camera
  depth (stable: ties by index);
* at the pixel centre ``(j + 0.5, i + 0.5)``: ``alpha = min(0.999, o exp(-sigma))``, skipped when
  ``sigma < 0`` or ``alpha < 1/255``; the pixel stops before the Gaussian whose ``T (1 - alpha)``
  would be ``<= 1e-4`` (that one is not composited).

So ``sum_i w_i`` is the rendered alpha of the pixel and ``sum_i w_i c_i`` its colour over a zero
background. A pixel is given by its coordinates ``(x, y)`` (x right, y down, in pixels of the
camera's resolution); the weights are those of the pixel containing it, ``(floor(x), floor(y))``.
Cost: one projection, then O(N) per pixel (a tile test) plus the pixel's own list.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .projection import project_gaussians
from .torch_backend import ALPHA_THRESHOLD, MAX_ALPHA, T_EPS

__all__ = ["pixel_contributions"]


def _pixel_ids(pixels, width: int, height: int, device) -> Tensor:
    """``[P,2]`` (x, y) coordinates -> ``[P,2]`` long (column, row); refuses points outside the image."""
    pts = torch.as_tensor(pixels, dtype=torch.float64).reshape(-1, 2)
    if not bool(torch.isfinite(pts).all()):
        raise ValueError(f"pixel_contributions: pixel coordinates must be finite, got {pts.tolist()}")
    for x, y in pts.tolist():
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"pixel_contributions: pixel ({x:g}, {y:g}) is outside the {width}x{height} image "
                             f"(0 <= x < {width}, 0 <= y < {height})")
    return torch.floor(pts).long().to(device)


@torch.no_grad()
def pixel_contributions(
    gaussians: dict,           # means [N,3], scales [N,3] (log), quats [N,4], opacities [N] (logit)
    camera,                    # viewmat, K, width, height (scene.cameras.Camera)
    pixels,                    # [P,2] (x, y) pixel coordinates
    *,
    top_k: int = 8,
    tile_size: int = 16,
    near: float = 0.01,
    far: float = 1e10,
) -> Tuple[Tensor, Tensor]:
    """The ``top_k`` largest compositing weights of each pixel: ``(indices [P,k] long, weights [P,k])``,
    by decreasing weight (ties: front first). Fewer than k contributors: index -1, weight 0.
    Everything is on the device of ``gaussians["means"]``, weights in its dtype."""
    if top_k < 1:
        raise ValueError(f"pixel_contributions: top_k must be >= 1, got {top_k}")
    means = gaussians["means"]
    device, dtype = means.device, means.dtype
    N = means.shape[0]
    W, H, ts = int(camera.width), int(camera.height), int(tile_size)
    ij = _pixel_ids(pixels, W, H, device)                                  # [P,2] (col, row)
    P = ij.shape[0]
    out_idx = torch.full((P, top_k), -1, dtype=torch.long, device=device)
    out_w = torch.zeros(P, top_k, dtype=dtype, device=device)
    if N == 0 or P == 0:
        return out_idx, out_w

    viewmat = torch.as_tensor(camera.viewmat, dtype=dtype, device=device)
    K = torch.as_tensor(camera.K, dtype=dtype, device=device)
    means2d, conics, depths, radii = project_gaussians(
        means, gaussians["quats"], torch.exp(gaussians["scales"]), viewmat, K, W, H, near=near, far=far)
    opacities = torch.sigmoid(gaussians["opacities"].reshape(N))

    # tile bounds exactly as isect_tiles computes them
    tiles_x, tiles_y = math.ceil(W / ts), math.ceil(H / ts)
    tile_means = means2d / ts
    tile_radii = radii.to(tile_means.dtype) / ts
    lim = torch.tensor([tiles_x, tiles_y], device=device)
    tmin = torch.minimum(torch.floor(tile_means - tile_radii).long().clamp(min=0), lim)   # [N,2]
    tmax = torch.minimum(torch.ceil(tile_means + tile_radii).long().clamp(min=0), lim)    # [N,2] exclusive
    visible = (radii > 0).all(dim=-1)
    # front-to-back order of the tile lists: stable sort by depth
    rank = torch.empty(N, dtype=torch.long, device=device)
    rank[torch.sort(depths, stable=True).indices] = torch.arange(N, device=device)

    for p in range(P):
        col, row = int(ij[p, 0]), int(ij[p, 1])
        tile = torch.tensor([col // ts, row // ts], device=device)
        in_tile = visible & (tmin <= tile).all(dim=-1) & (tile < tmax).all(dim=-1)
        gid = torch.nonzero(in_tile).squeeze(1)
        if gid.numel() == 0:
            continue
        gid = gid[torch.argsort(rank[gid])]                                # front to back
        dx = means2d[gid, 0] - (col + 0.5)
        dy = means2d[gid, 1] - (row + 0.5)
        a, b, c = conics[gid].unbind(-1)
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacities[gid] * torch.exp(-sigma.clamp(min=0)), max=MAX_ALPHA)
        used = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        alpha = torch.where(used, alpha, torch.zeros_like(alpha))
        t_incl = torch.cumprod(1.0 - alpha, dim=0)                         # T after each Gaussian
        t_excl = torch.cat([t_incl.new_ones(1), t_incl[:-1]])              # T in front of each
        w = torch.where(used & (t_incl > T_EPS), alpha * t_excl, torch.zeros_like(alpha))
        k = min(top_k, gid.numel())
        order = torch.sort(w, descending=True, stable=True).indices[:k]
        keep = w[order] > 0
        out_idx[p, :k] = torch.where(keep, gid[order], torch.full_like(order, -1))
        out_w[p, :k] = torch.where(keep, w[order], torch.zeros_like(w[order]))
    return out_idx, out_w
