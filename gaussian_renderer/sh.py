"""Real spherical harmonics up to degree 3, in the 3DGS / gsplat convention.

Coefficient k of a Gaussian multiplies basis function k below (same order and signs as 3DGS's
``sh_utils.eval_sh`` and gsplat's ``spherical_harmonics``); the renderer turns the result into a
colour with ``clamp_min(eval_sh(...) + 0.5, 0)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Real SH normalisation constants (3DGS utils/sh_utils.py; Sloan, "Efficient Spherical Harmonic
# Evaluation", JCGT 2013)
SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi)); graphdeco 3DGS utils/sh_utils.py
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
         -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """The (degree+1)^2 basis functions at unit directions. dirs: [N,3] unit. Returns [N,(d+1)^2]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"eval_sh: SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy),
                SH_C2[3] * x * z, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z,
                SH_C3[2] * y * (4 * zz - xx - yy), SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
                SH_C3[4] * x * (4 * zz - xx - yy), SH_C3[5] * z * (xx - yy),
                SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate SH colours (without the +0.5 offset).

    degree: 0..3; dirs: [N,3] view directions (normalised here); coeffs: [N,K,3] with
    K >= (degree+1)^2 (extra coefficients are ignored). Returns [N,3]."""
    n_b = (degree + 1) ** 2
    if coeffs.dim() != 3 or coeffs.shape[-1] != 3 or coeffs.shape[1] < n_b:
        raise ValueError(f"eval_sh: coeffs must be [N,K>={n_b},3] for degree {degree}, "
                         f"got {tuple(coeffs.shape)}")
    if tuple(dirs.shape) != (coeffs.shape[0], 3):
        raise ValueError(f"eval_sh: dirs must be [{coeffs.shape[0]},3], got {tuple(dirs.shape)}")
    basis = sh_bases(degree, F.normalize(dirs, dim=-1))   # [N,n_b]
    return torch.einsum("nk,nkc->nc", basis, coeffs[:, :n_b])
