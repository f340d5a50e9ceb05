"""EWA projection of 3D Gaussians to the image plane, and tile binning.

The maths follows gsplat 1.5.3 (pinhole camera, ``gsplat/cuda/_torch_impl.py``:
``_fully_fused_projection``, ``_persp_proj`` and ``_isect_tiles``) so that the CPU backends and the
gsplat CUDA backend produce the same images:

* 3D covariance ``Sigma = (R S)(R S)^T`` with ``R`` from the normalised quaternion ``(w, x, y, z)``.
* Camera covariance ``W Sigma W^T`` with ``W`` the rotation of the world-to-camera matrix.
* Jacobian of the perspective map evaluated at the mean, with ``x/z`` and ``y/z`` clamped to the
  view frustum widened by 30 % of the half-FOV tangent (3DGS / gsplat "lim" clamp).
* ``+eps2d`` on the diagonal of the 2D covariance (anti-aliasing dilation, gsplat default 0.3),
  determinant clamped to ``>= 1e-10`` before inversion.
* Radii ``ceil(3.33 * sqrt(cov2d_xx))``, ``ceil(3.33 * sqrt(cov2d_yy))`` (gsplat 1.5 torch reference).

Conventions: OpenCV camera axes, pixel intrinsics, the centre of pixel (i, j) is (j + 0.5, i + 0.5)
(see ``scene/cameras.py``). Conics are the upper triangle ``(a, b, c)`` of the inverse 2D covariance
``[[a, b], [b, c]]``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

RADIUS_SIGMAS = 3.33     # gsplat 1.5: box half-size in standard deviations (alpha 1/255 at opacity 1)
FOV_CLAMP_MARGIN = 0.3   # gsplat / 3DGS: clamp x/z, y/z to 1.3x the half image extent
DET_MIN = 1e-10          # gsplat torch reference: det.clamp(min=1e-10)
EPS2D = 0.3              # gsplat rasterization() default: anti-aliasing dilation of the 2D covariance


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from quaternions.

    quats: [N, 4] (w, x, y, z), need not be normalised. Returns [N, 3, 3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances ``(R S)(R S)^T``.

    quats: [N, 4] (w, x, y, z); scales: [N, 3] linear (activated). Returns [N, 3, 3]."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # [N,3,3] = R @ diag(s)
    return M @ M.transpose(-1, -2)


def _check_shapes(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, K: Tensor) -> None:
    N = means.shape[0] if means.dim() == 2 else -1
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"project_gaussians: means must be [N,3], got {tuple(means.shape)}")
    if tuple(quats.shape) != (N, 4):
        raise ValueError(f"project_gaussians: quats must be [{N},4], got {tuple(quats.shape)}")
    if tuple(scales.shape) != (N, 3):
        raise ValueError(f"project_gaussians: scales must be [{N},3], got {tuple(scales.shape)}")
    if tuple(viewmat.shape) != (4, 4):
        raise ValueError(f"project_gaussians: viewmat must be [4,4], got {tuple(viewmat.shape)}")
    if tuple(K.shape) != (3, 3):
        raise ValueError(f"project_gaussians: K must be [3,3], got {tuple(K.shape)}")


def project_gaussians(
    means: Tensor,    # [N, 3] world positions
    quats: Tensor,    # [N, 4] (w, x, y, z), unnormalised
    scales: Tensor,   # [N, 3] activated (linear) scales
    viewmat: Tensor,  # [4, 4] world -> camera
    K: Tensor,        # [3, 3] pixel intrinsics
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = EPS2D,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Project 3D Gaussians to 2D (EWA splatting, gsplat 1.5.3 pinhole maths).

    Returns ``(means2d [N,2] pixels, conics [N,3] (a,b,c) of the inverse 2D covariance,
    depths [N] camera z, radii [N,2] int32)``. ``radii`` is 0 (both entries) for culled Gaussians:
    non-positive 2D determinant, ``z <= near``, ``z >= far``, or a box fully outside the image.
    means2d/conics of culled Gaussians are finite but meaningless. Differentiable w.r.t. means,
    quats, scales (and viewmat, K)."""
    _check_shapes(means, quats, scales, viewmat, K)
    viewmat = viewmat.to(means)
    K = K.to(means)

    # world -> camera
    Rw = viewmat[:3, :3]                                   # [3,3]
    tw = viewmat[:3, 3]                                    # [3]
    means_c = means @ Rw.T + tw                            # [N,3]
    covar_c = Rw @ covariance_3d(quats, scales) @ Rw.T     # [N,3,3]

    z = means_c[:, 2]                                      # [N]
    depth_ok = (z > near) & (z < far)
    # culled Gaussians may sit at z == 0: divide by a harmless 1 there (their outputs are unused)
    zs = torch.where(depth_ok, z, torch.ones_like(z))
    x, y = means_c[:, 0], means_c[:, 1]

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FOV_CLAMP_MARGIN * tan_fovx
    lim_x_neg = cx / fx + FOV_CLAMP_MARGIN * tan_fovx
    lim_y_pos = (height - cy) / fy + FOV_CLAMP_MARGIN * tan_fovy
    lim_y_neg = cy / fy + FOV_CLAMP_MARGIN * tan_fovy
    xc = zs * torch.clamp(x / zs, min=-lim_x_neg, max=lim_x_pos)
    yc = zs * torch.clamp(y / zs, min=-lim_y_neg, max=lim_y_pos)

    zero = torch.zeros_like(zs)
    J = torch.stack(
        [fx / zs, zero, -fx * xc / (zs * zs), zero, fy / zs, -fy * yc / (zs * zs)], dim=-1
    ).reshape(-1, 2, 3)                                    # [N,2,3]
    cov2d = J @ covar_c @ J.transpose(-1, -2)              # [N,2,2]

    # mean: K[:2,:3] @ (x, y, z) / z (unclamped position, like gsplat)
    means2d = (means_c @ K[:2, :3].T) / zs[:, None]        # [N,2]

    a = cov2d[:, 0, 0] + eps2d
    c = cov2d[:, 1, 1] + eps2d
    b = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    det_raw = a * c - b * b
    det = det_raw.clamp(min=DET_MIN)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # [N,3]

    with torch.no_grad():
        radii = torch.stack(
            [torch.ceil(RADIUS_SIGMAS * torch.sqrt(a.clamp(min=0))),
             torch.ceil(RADIUS_SIGMAS * torch.sqrt(c.clamp(min=0)))], dim=-1
        )                                                   # [N,2]
        valid = depth_ok & (det_raw > 0)
        inside = (
            (means2d[:, 0] + radii[:, 0] > 0) & (means2d[:, 0] - radii[:, 0] < width)
            & (means2d[:, 1] + radii[:, 1] > 0) & (means2d[:, 1] - radii[:, 1] < height)
        )
        keep = valid & inside
        radii = torch.where(keep[:, None], radii, torch.zeros_like(radii)).to(torch.int32)
    return means2d, conics, z, radii


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,  # [N, 2] pixels
    radii: Tensor,    # [N, 2] int, 0 = culled
    depths: Tensor,   # [N] camera z
    width: int,
    height: int,
    tile_size: int = 16,
) -> Tuple[Tensor, Tensor]:
    """Bin Gaussians into screen tiles (vectorised; gsplat 1.5.3 tile bounds).

    Tile ``t = ty * tiles_x + tx`` with ``tiles_x = ceil(W / tile_size)``. A Gaussian with both radii
    > 0 touches tiles ``[floor(m/ts - r/ts), ceil(m/ts + r/ts))`` per axis, clamped to the grid.

    Returns ``tile_offsets [n_tiles + 1] int64`` (CSR: the Gaussians of tile t are
    ``flatten_ids[tile_offsets[t]:tile_offsets[t+1]]``) and ``flatten_ids [M] int64`` (Gaussian
    indices, front-to-back by depth within each tile, ties by index)."""
    device = means2d.device
    N = means2d.shape[0]
    if means2d.shape != (N, 2) or tuple(radii.shape) != (N, 2) or tuple(depths.shape) != (N,):
        raise ValueError(
            f"isect_tiles: expected means2d [N,2], radii [N,2], depths [N], got "
            f"{tuple(means2d.shape)}, {tuple(radii.shape)}, {tuple(depths.shape)}")
    tiles_x = math.ceil(width / tile_size)
    tiles_y = math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y

    tile_means = means2d.detach() / tile_size              # [N,2]
    tile_radii = radii.to(tile_means.dtype) / tile_size    # [N,2]
    lim = torch.tensor([tiles_x, tiles_y], device=device)
    tmin = torch.floor(tile_means - tile_radii).long().clamp(min=0)
    tmin = torch.minimum(tmin, lim)                        # [N,2]
    tmax = torch.ceil(tile_means + tile_radii).long().clamp(min=0)
    tmax = torch.minimum(tmax, lim)                        # [N,2] exclusive
    extent = tmax - tmin                                   # [N,2]
    visible = (radii > 0).all(dim=-1)
    n_per = extent[:, 0] * extent[:, 1] * visible          # [N]

    gid = torch.repeat_interleave(torch.arange(N, device=device), n_per)  # [M]
    M = gid.numel()
    if M == 0:
        return (torch.zeros(n_tiles + 1, dtype=torch.long, device=device),
                torch.zeros(0, dtype=torch.long, device=device))
    first = torch.cumsum(n_per, 0) - n_per                 # [N] start of each Gaussian's run
    local = torch.arange(M, device=device) - first[gid]    # [M] index within the Gaussian's box
    w = extent[gid, 0]
    tx = tmin[gid, 0] + local % w
    ty = tmin[gid, 1] + local // w
    tile_id = ty * tiles_x + tx                            # [M]

    # depth rank of every Gaussian (stable sort: ties by index), then sort by (tile, rank)
    order = torch.sort(depths.detach(), stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(N, device=device)
    key = tile_id * N + rank[gid]
    perm = torch.argsort(key)
    flatten_ids = gid[perm]
    counts = torch.bincount(tile_id, minlength=n_tiles)    # [n_tiles]
    tile_offsets = torch.zeros(n_tiles + 1, dtype=torch.long, device=device)
    tile_offsets[1:] = torch.cumsum(counts, 0)
    return tile_offsets, flatten_ids
