"""A tiny, obviously-correct dense twin of the tiled rasterizer (tests only).

Every pixel against every visible Gaussian, Gaussians taken one at a time in global depth order,
with the per-pixel loop of gsplat's kernel written out literally (vectorised over pixels only):
skip if sigma < 0 or alpha < 1/255, stop -- without compositing -- once T * (1 - alpha) <= 1e-4.
Differentiable by autograd (only out-of-place ops). Slow on purpose: no tiles, no cumprod.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gaussian_renderer.torch_backend import ALPHA_THRESHOLD, MAX_ALPHA, T_EPS


def dense_rasterize(
    means2d: Tensor,    # [N, 2] pixels
    conics: Tensor,     # [N, 3] (a, b, c)
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,     # [N, D]
    depths: Tensor,     # [N] sort key (front to back, ties by index)
    visible: Tensor,    # [N] bool: Gaussians that take part (radii > 0)
    width: int,
    height: int,
    bg: Optional[Tensor] = None,  # [D]
    t_eps: float = T_EPS,         # stop threshold (tests set 0 to switch the stop rule off)
) -> tuple[Tensor, Tensor]:
    """Returns color [H,W,D] over bg and alpha [H,W,1]."""
    dtype = means2d.dtype
    D = colors.shape[1]
    jj, ii = torch.meshgrid(torch.arange(width, dtype=dtype), torch.arange(height, dtype=dtype),
                            indexing="xy")
    px = jj.reshape(-1) + 0.5     # [H*W] pixel centre x
    py = ii.reshape(-1) + 0.5     # [H*W] pixel centre y

    T = torch.ones(px.shape[0], dtype=dtype)          # transmittance per pixel
    done = torch.zeros(px.shape[0], dtype=torch.bool)  # pixel has stopped
    out = torch.zeros(px.shape[0], D, dtype=dtype)
    order = torch.sort(depths.detach(), stable=True).indices
    for g in order.tolist():
        if not bool(visible[g]):
            continue
        dx = means2d[g, 0] - px
        dy = means2d[g, 1] - py
        a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacities[g] * torch.exp(-sigma.clamp(min=0)), max=MAX_ALPHA)
        skip = (sigma < 0) | (alpha < ALPHA_THRESHOLD)
        next_T = T * (1 - alpha)
        stops_here = ~done & ~skip & (next_T <= t_eps)
        done = done | stops_here
        draw = ~done & ~skip
        out = out + torch.where(draw[:, None], (alpha * T)[:, None] * colors[g], torch.zeros_like(out))
        T = torch.where(draw, next_T, T)
    if bg is not None:
        out = out + T[:, None] * bg
    return out.reshape(height, width, D), (1 - T).reshape(height, width, 1)
