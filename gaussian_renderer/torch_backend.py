"""Tiled alpha compositing of projected 2D Gaussians in plain torch (the CPU reference backend).

Per pixel, Gaussians are composited front to back exactly like gsplat 1.5.3's
``rasterize_to_pixels_3dgs_fwd`` kernel (``gsplat/cuda/csrc/RasterizeToPixels3DGSFwd.cu``)::

    sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy          # d = mean2d - pixel centre (j+.5, i+.5)
    alpha = min(MAX_ALPHA, opacity * exp(-sigma))
    skip if sigma < 0 or alpha < ALPHA_THRESHOLD
    next_T = T * (1 - alpha)
    stop (exclusive: this Gaussian is NOT composited) if next_T <= T_EPS
    color += colour * alpha * T;  T = next_T
    out = color + T * bg;  alpha_out = 1 - T

Vectorised form: with ``A_k`` the effective alphas (0 for skipped pairs) and
``Tincl_k = prod_{j<=k} (1 - A_j)``, Gaussian k is composited iff it is not skipped and
``Tincl_k > T_EPS`` -- T is non-increasing, so this is the same as "the pixel has not stopped
before k". The whole pipeline is differentiable by autograd.

Tiles are processed in batches (tiles of similar list length together) and long lists in chunks
along the list, so that the number of (pixel, Gaussian) pairs alive at once stays below
``max_pairs``; the transmittance is carried from chunk to chunk.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.utils.checkpoint
from torch import Tensor

# gsplat 1.5.3 kernel constants (gsplat/cuda/include/Common.h, RasterizeToPixels3DGSFwd.cu)
ALPHA_THRESHOLD = 1.0 / 255.0   # pairs with a smaller alpha are skipped
MAX_ALPHA = 0.999               # alpha = min(0.999f, opac * exp(-sigma)) in gsplat >= 1.0
T_EPS = 1e-4                    # stop when next_T <= 1e-4 (that Gaussian is not composited)

DEFAULT_MAX_PAIRS = 1 << 21     # (pixel, Gaussian) pairs per batch: ~8 MB per float32 buffer
CHECKPOINT_PAIRS = 1 << 24      # above this many pairs per view, autograd recomputes per batch


def check_raster_inputs(means2d, conics, opacities, colors, tile_offsets, flatten_ids,
                        width, height, tile_size, bg) -> None:
    """Raise a one-line ValueError for malformed rasterizer inputs (shared with the C++ backend)."""
    N = means2d.shape[0] if means2d.dim() == 2 else -1
    if means2d.dim() != 2 or means2d.shape[1] != 2:
        raise ValueError(f"rasterize: means2d must be [N,2], got {tuple(means2d.shape)}")
    if tuple(conics.shape) != (N, 3):
        raise ValueError(f"rasterize: conics must be [{N},3], got {tuple(conics.shape)}")
    if tuple(opacities.shape) != (N,):
        raise ValueError(f"rasterize: opacities must be [{N}], got {tuple(opacities.shape)}")
    if colors.dim() != 2 or colors.shape[0] != N:
        raise ValueError(f"rasterize: colors must be [{N},D], got {tuple(colors.shape)}")
    if width <= 0 or height <= 0 or tile_size <= 0:
        raise ValueError(f"rasterize: bad image/tile size {width}x{height}, tile {tile_size}")
    n_tiles = math.ceil(width / tile_size) * math.ceil(height / tile_size)
    if tuple(tile_offsets.shape) != (n_tiles + 1,):
        raise ValueError(f"rasterize: tile_offsets must be [{n_tiles + 1}] for {width}x{height} "
                         f"with tile {tile_size}, got {tuple(tile_offsets.shape)}")
    if flatten_ids.dim() != 1:
        raise ValueError(f"rasterize: flatten_ids must be 1-D, got {tuple(flatten_ids.shape)}")
    if bg is not None and tuple(bg.shape) != (colors.shape[1],):
        raise ValueError(f"rasterize: bg must be [{colors.shape[1]}], got {tuple(bg.shape)}")


def _composite_tiles(
    tile_ids: Tensor,     # [B] tile indices of this batch
    starts: Tensor,       # [B] first entry of each tile in flatten_ids
    counts: Tensor,       # [B] list length of each tile
    k_max: int,           # max(counts)
    means2d: Tensor,      # [N,2]
    conics: Tensor,       # [N,3]
    opacities: Tensor,    # [N]
    colors: Tensor,       # [N,D]
    flatten_ids: Tensor,  # [M]
    tiles_x: int,
    tile_size: int,
    k_chunk: int,
) -> tuple[Tensor, Tensor]:
    """Composite B tiles. Returns colour sums [B,P,D] and final transmittance [B,P] (P = ts^2)."""
    device, dtype = means2d.device, means2d.dtype
    B = tile_ids.numel()
    ts = tile_size
    # pixel centres of every tile, row-major inside the tile
    r = torch.arange(ts, device=device, dtype=dtype) + 0.5
    px = ((tile_ids % tiles_x) * ts).to(dtype)[:, None] + r.repeat(ts)[None, :]            # [B,P]
    py = ((tile_ids // tiles_x) * ts).to(dtype)[:, None] + r.repeat_interleave(ts)[None, :]  # [B,P]
    px, py = px[:, :, None], py[:, :, None]                                               # [B,P,1]

    # carried over chunks: T_run multiplies in every non-skipped alpha (also the one that stopped the
    # pixel, so that later chunks stay stopped); T is the transmittance after the drawn Gaussians
    T_run = torch.ones(B, ts * ts, device=device, dtype=dtype)
    T = T_run
    acc = torch.zeros(B, ts * ts, colors.shape[1], device=device, dtype=dtype)
    for k0 in range(0, k_max, k_chunk):
        k = torch.arange(k0, min(k0 + k_chunk, k_max), device=device)  # [K]
        in_list = k[None, :] < counts[:, None]                         # [B,K]
        pos = torch.where(in_list, starts[:, None] + k[None, :], torch.zeros_like(in_list, dtype=torch.long))
        gid = torch.where(in_list, flatten_ids[pos], torch.zeros_like(pos))  # [B,K]

        mx, my = means2d[gid, 0][:, None, :], means2d[gid, 1][:, None, :]  # [B,1,K]
        ca, cb, cc = (conics[gid, i][:, None, :] for i in range(3))       # [B,1,K]
        dx, dy = mx - px, my - py                                          # [B,P,K]
        sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
        # exp of a clamped sigma: skipped pairs (sigma < 0) must not produce inf * 0 in backward
        alpha = torch.clamp(opacities[gid][:, None, :] * torch.exp(-sigma.clamp(min=0)), max=MAX_ALPHA)
        used = in_list[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)  # [B,P,K]
        alpha = torch.where(used, alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - alpha
        t_incl = T_run[:, :, None] * torch.cumprod(one_minus, dim=-1)     # T after each Gaussian
        t_excl = torch.cat([T_run[:, :, None], t_incl[:, :, :-1]], dim=-1) # T before each Gaussian
        drawn = used & (t_incl > T_EPS)
        weights = torch.where(drawn, alpha * t_excl, torch.zeros_like(alpha))  # [B,P,K]
        acc = acc + torch.bmm(weights, colors[gid])                        # [B,P,D]
        T = T * torch.where(drawn, one_minus, torch.ones_like(one_minus)).prod(dim=-1)
        T_run = t_incl[:, :, -1]
    return acc, T


def rasterize_torch(
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
    max_pairs: int = DEFAULT_MAX_PAIRS,
    checkpoint: Optional[bool] = None,
) -> tuple[Tensor, Tensor]:
    """Render the image: ``color [H,W,D]`` (composited over ``bg``) and ``alpha [H,W,1]``.

    Differentiable by autograd w.r.t. means2d, conics, opacities, colors (and bg).
    ``max_pairs`` bounds the (pixel, Gaussian) pairs evaluated at once. ``checkpoint``: recompute each
    batch during backward instead of keeping its intermediates (bounded memory, ~1.5x slower);
    None = only when the view has more than ``CHECKPOINT_PAIRS`` pairs."""
    if bg is not None:
        bg = torch.as_tensor(bg, dtype=colors.dtype, device=colors.device)
    check_raster_inputs(means2d, conics, opacities, colors, tile_offsets, flatten_ids,
                        width, height, tile_size, bg)
    device, dtype = means2d.device, means2d.dtype
    colors = colors.to(dtype)
    D = colors.shape[1]
    ts = tile_size
    P = ts * ts
    tiles_x, tiles_y = math.ceil(width / ts), math.ceil(height / ts)
    n_tiles = tiles_x * tiles_y
    bg_vec = torch.zeros(D, device=device, dtype=dtype) if bg is None else bg.to(dtype)

    tile_offsets = tile_offsets.to(device=device, dtype=torch.long)
    flatten_ids = flatten_ids.to(device=device, dtype=torch.long)
    counts = tile_offsets[1:] - tile_offsets[:-1]                       # [n_tiles]
    busy = torch.nonzero(counts > 0).flatten()
    busy = busy[torch.argsort(counts[busy], descending=True, stable=True)]  # longest lists first
    busy_counts = counts[busy].tolist()

    total_pairs = P * sum(busy_counts)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, colors, bg_vec))
    if checkpoint is None:
        checkpoint = total_pairs > CHECKPOINT_PAIRS
    use_checkpoint = bool(checkpoint) and needs_grad

    # empty tiles: background, alpha 0
    fill = torch.cat([bg_vec, bg_vec.new_zeros(1)])                      # [D+1]
    out = fill.expand(n_tiles, P, D + 1).clone()
    pieces, piece_tiles = [], []
    i = 0
    while i < len(busy_counts):
        k_max = busy_counts[i]                       # the longest list of the batch (sorted)
        per_tile = P * k_max
        n_batch = max(1, min(len(busy_counts) - i, max_pairs // max(per_tile, 1)))
        k_chunk = max(1, min(k_max, max_pairs // (P * n_batch)))
        tiles = busy[i:i + n_batch]

        def batch(m2, co, op, cl, bgv, tiles=tiles, k_max=k_max, k_chunk=k_chunk):
            acc, T = _composite_tiles(tiles, tile_offsets[tiles], counts[tiles], k_max, m2, co, op,
                                      cl, flatten_ids, tiles_x, ts, k_chunk)
            color = acc + T[:, :, None] * bgv                               # [B,P,D]
            return torch.cat([color, (1.0 - T)[:, :, None]], dim=-1)        # [B,P,D+1]

        args = (means2d, conics, opacities, colors, bg_vec)
        if use_checkpoint:  # recompute this batch in backward instead of storing its pairs
            pieces.append(torch.utils.checkpoint.checkpoint(batch, *args, use_reentrant=False))
        else:
            pieces.append(batch(*args))
        piece_tiles.append(tiles)
        i += n_batch
    if pieces:
        out = out.index_copy(0, torch.cat(piece_tiles), torch.cat(pieces))  # [n_tiles,P,D+1]

    img = (out.reshape(tiles_y, tiles_x, ts, ts, D + 1).permute(0, 2, 1, 3, 4)
           .reshape(tiles_y * ts, tiles_x * ts, D + 1)[:height, :width])
    return img[..., :D], img[..., D:]
