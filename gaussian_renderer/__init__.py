"""Gaussian splatting renderer: one entry point, ``render(gaussians, camera, features=None, ...)``.

Backends (all share gsplat 1.5.3's maths and constants, so they render the same image):

* ``"torch"``  -- tiled pure-torch compositor (``torch_backend.rasterize_torch``), differentiable by
  autograd; the reference.
* ``"cpp"``    -- C++/OpenMP CPU kernel with the same signature (``cpp_backend.rasterize_cpp``).
* ``"gsplat"`` -- gsplat's CUDA rasterizer (``gsplat_backend.render_gsplat``).
* ``"auto"``   -- gsplat on CUDA tensors, else cpp if it builds, else torch.

Projection (``projection.project_gaussians``) and tile binning (``projection.isect_tiles``) are
shared by the CPU backends. Images are channels-last ``[H, W, D]``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .contributions import pixel_contributions
from .projection import isect_tiles, project_gaussians
from .sh import eval_sh
from .torch_backend import rasterize_torch

__all__ = ["BACKENDS", "RenderOutput", "render", "resolve_backend", "project_gaussians",
           "isect_tiles", "rasterize_torch", "eval_sh", "pixel_contributions"]

BACKENDS = ("auto", "torch", "cpp", "gsplat")
_warned: set = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _cpp_available() -> bool:
    try:
        from . import cpp_backend
    except ImportError as e:
        _warn_once("cpp-import", f"gaussian_renderer: C++ backend unavailable ({e}); using torch")
        return False
    return bool(cpp_backend.available())


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend ("torch" | "cpp" | "gsplat") that ``backend`` means for tensors on
    ``device``. Explicit names are returned as given (checked on use)."""
    if backend not in BACKENDS:
        raise ValueError(f"render: unknown backend {backend!r}, expected one of {BACKENDS}")
    if backend != "auto":
        return backend
    if torch.device(device).type == "cuda":
        try:
            from . import gsplat_backend
        except ImportError as e:
            _warn_once("gsplat-import", f"gaussian_renderer: gsplat backend unavailable ({e}); "
                                        "using the torch backend on CUDA")
            return "torch"
        ok, reason = gsplat_backend.extension_status()   # builds gsplat's kernels on first use
        if ok:
            return "gsplat"
        _warn_once("gsplat-ext", f"gaussian_renderer: gsplat backend unusable ({reason}); "
                                 "using the torch backend on CUDA")
        return "torch"
    return "cpp" if _cpp_available() else "torch"


@dataclass
class RenderOutput:
    color: Tensor     # [H, W, D] composited over the background
    alpha: Tensor     # [H, W, 1] accumulated opacity (1 - final transmittance)
    depth: Optional[Tensor]  # [H, W, 1] expected camera z (0 where alpha == 0); None if not asked
    means2d: Tensor   # [1, N, 2] pixel means, in the graph: .retain_grad() gives pixel gradients
    radii: Tensor     # [1, N, 2] int32, 0 = culled
    visible: Tensor   # [N] bool, both radii > 0
    width: int
    height: int

    @property
    def info(self) -> Dict[str, Any]:
        """The dict gsplat.strategy.DefaultStrategy expects from ``rasterization``."""
        return {"means2d": self.means2d, "radii": self.radii, "width": self.width,
                "height": self.height, "n_cameras": 1, "gaussian_ids": None}


_KEYS = ("means", "scales", "quats", "opacities")


def _check_gaussians(g: Dict[str, Tensor], need_sh: bool) -> int:
    if not isinstance(g, dict) and not hasattr(g, "keys"):
        raise ValueError(f"render: gaussians must be a dict of tensors, got {type(g).__name__}")
    keys = _KEYS + (("sh0", "shN") if need_sh else ())
    missing = [k for k in keys if k not in g]
    if missing:
        raise ValueError(f"render: gaussians dict lacks {missing} (has {sorted(g.keys())})")
    N = g["means"].shape[0]
    expect = {"means": (N, 3), "scales": (N, 3), "quats": (N, 4)}
    for k, shape in expect.items():
        if tuple(g[k].shape) != shape:
            raise ValueError(f"render: gaussians[{k!r}] must be {list(shape)}, got {list(g[k].shape)}")
    if g["opacities"].numel() != N or g["opacities"].dim() > 2:
        raise ValueError(f"render: gaussians['opacities'] must be [{N}], got {list(g['opacities'].shape)}")
    if need_sh:
        if g["sh0"].shape != (N, 1, 3):
            raise ValueError(f"render: gaussians['sh0'] must be [{N},1,3], got {list(g['sh0'].shape)}")
        if g["shN"].dim() != 3 or g["shN"].shape[0] != N or g["shN"].shape[2] != 3:
            raise ValueError(f"render: gaussians['shN'] must be [{N},K-1,3], got {list(g['shN'].shape)}")
    return N


def render(
    gaussians: Dict[str, Tensor],
    camera,
    features: Optional[Tensor] = None,   # [N, D] rendered instead of SH colours
    *,
    backend: str = "auto",
    bg=None,                             # [D] tensor / sequence, or None (= zeros)
    sh_degree: Optional[int] = None,
    near: float = 0.01,
    far: float = 1e10,
    tile_size: int = 16,
    return_depth: bool = True,
) -> RenderOutput:
    """Render one view.

    gaussians: dict with ``means [N,3]``, ``scales [N,3]`` (log), ``quats [N,4]`` (w,x,y,z),
    ``opacities [N]`` (logit), ``sh0 [N,1,3]``, ``shN [N,K-1,3]`` (SH keys only needed when
    ``features`` is None). camera: ``scene.cameras.Camera`` (viewmat, K, width, height, center).
    Colours are ``clamp_min(SH(dirs) + 0.5, 0)`` with ``dirs = means - camera centre`` and
    ``sh_degree`` (None = the highest the coefficients allow)."""
    N = _check_gaussians(gaussians, need_sh=features is None)
    means = gaussians["means"]
    device, dtype = means.device, means.dtype
    W, H = int(camera.width), int(camera.height)
    name = resolve_backend(backend, device)
    if name == "gsplat":
        try:
            from .gsplat_backend import render_gsplat
        except ImportError as e:
            raise ImportError(f"render: backend 'gsplat' is not available: {e}") from None
        return render_gsplat(gaussians, camera, features, bg=bg, sh_degree=sh_degree, near=near,
                             far=far, tile_size=tile_size, return_depth=return_depth)
    if name == "cpp":
        try:
            from .cpp_backend import rasterize_cpp as rasterize
        except ImportError as e:
            raise ImportError(f"render: backend 'cpp' is not available: {e}") from None
    else:
        rasterize = rasterize_torch

    viewmat = torch.as_tensor(camera.viewmat, dtype=dtype, device=device)  # [4,4]
    K = torch.as_tensor(camera.K, dtype=dtype, device=device)              # [3,3]
    means2d, conics, depths, radii = project_gaussians(
        means, gaussians["quats"], torch.exp(gaussians["scales"]), viewmat, K, W, H,
        near=near, far=far)
    means2d_b = means2d[None]            # [1,N,2] the tensor DefaultStrategy calls retain_grad on
    opacities = torch.sigmoid(gaussians["opacities"].reshape(N))

    if features is not None:
        if features.dim() != 2 or features.shape[0] != N:
            raise ValueError(f"render: features must be [{N},D], got {list(features.shape)}")
        colors = features.to(dtype)
    else:
        coeffs = torch.cat([gaussians["sh0"], gaussians["shN"]], dim=1)   # [N,K,3]
        max_deg = math.isqrt(coeffs.shape[1]) - 1
        deg = max_deg if sh_degree is None else int(sh_degree)
        if not 0 <= deg <= min(max_deg, 3):
            raise ValueError(f"render: sh_degree {deg} needs {(deg + 1) ** 2} SH coefficients, "
                             f"the Gaussians have {coeffs.shape[1]}")
        campos = torch.as_tensor(camera.center, dtype=dtype, device=device)  # [3]
        colors = torch.clamp_min(eval_sh(deg, means - campos, coeffs) + 0.5, 0.0)
    D = colors.shape[1]

    if bg is None:
        bg_vec = torch.zeros(D, dtype=dtype, device=device)
    else:
        bg_vec = torch.as_tensor(bg, dtype=dtype, device=device).reshape(-1)
        if bg_vec.numel() != D:
            raise ValueError(f"render: bg must have {D} values (one per channel), got {bg_vec.numel()}")
    if return_depth:   # depth as an extra channel over a zero background
        colors = torch.cat([colors, depths[:, None]], dim=-1)
        bg_vec = torch.cat([bg_vec, bg_vec.new_zeros(1)])

    tile_offsets, flatten_ids = isect_tiles(means2d, radii, depths, W, H, tile_size)
    image, alpha = rasterize(means2d_b[0], conics, opacities, colors, tile_offsets, flatten_ids,
                             W, H, tile_size=tile_size, bg=bg_vec)
    depth = None
    if return_depth:
        image, acc_z = image[..., :D], image[..., D:]
        depth = acc_z / alpha.clamp(min=1e-10)   # gsplat "ED": 0 where nothing was drawn
    return RenderOutput(color=image, alpha=alpha, depth=depth, means2d=means2d_b,
                        radii=radii[None], visible=(radii > 0).all(dim=-1), width=W, height=H)
