"""The CUDA backend: gsplat 1.5.3's ``rasterization`` behind the same ``render(...)`` contract as
the torch backend. The only module of the project that renders with gsplat.

What goes in (``render_gsplat`` is called by ``gaussian_renderer.render``, which has already checked
the Gaussian dict): ``means [N,3]``, ``quats [N,4]`` (w,x,y,z, unnormalised: gsplat normalises),
``scales [N,3]`` log (exp'd here), ``opacities [N]`` logit (sigmoid'd here), and either
``features [N,D]`` (any D, passed as post-activation colours, ``sh_degree=None``) or the SH
coefficients ``cat(sh0 [N,1,3], shN [N,K-1,3])`` with ``sh_degree`` (gsplat then computes
``clamp_min(SH(means - camera centre) + 0.5, 0)`` itself, as the torch backend does).

What comes back (``gaussian_renderer.RenderOutput``): ``color [H,W,D]`` over ``bg``, ``alpha [H,W,1]``,
``depth [H,W,1]`` = gsplat's "ED" expected depth (accumulated camera z / alpha, 0 where nothing was
drawn; render_mode "RGB+ED", the torch backend's definition), ``means2d [1,N,2]`` (gsplat's
projected means, in the graph: ``retain_grad()`` gives the pixel gradients DefaultStrategy reads),
``radii [1,N,2]`` int32 and ``visible [N]``. ``packed=False`` so means2d/radii are per camera and
per Gaussian, as ``DefaultStrategy.step_post_backward(..., packed=False)`` expects.

Differences from the torch backend (images agree to float32 rounding and gsplat's -use_fast_math):

* gsplat 1.5.3's CUDA projection bounds each Gaussian with an opacity-aware box
  (``min(3.33, sqrt(2 ln(opacity * 255)))`` sigmas, "StopThePop" Sec. B.2) and culls opacities
  below 1/255, so its ``radii`` are <= the torch backend's and a few faint Gaussians near the image
  border count as invisible. Both boxes contain every pixel whose alpha reaches 1/255, so the
  rendered values do not change.
* gsplat's kernels are float32 only: other dtypes are cast to float32 and the outputs cast back.

The CUDA kernels are compiled by gsplat on first use (a few minutes, cached under
``~/.cache/torch_extensions``); :func:`extension_status` triggers and checks that build once,
including a one-Gaussian smoke render that catches a build for the wrong GPU architecture.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .projection import EPS2D

try:  # pure python: this does not build anything; the CUDA build happens in extension_status()
    import gsplat  # noqa: F401
except ImportError as e:  # makes `from . import gsplat_backend` fail, which "auto" turns into a fallback
    raise ImportError(f"gsplat is not installed ({e}); pip install gsplat==1.5.3") from None

__all__ = ["render_gsplat", "extension_status", "available", "arch_list_problem", "EPS2D"]


_STATUS: Optional[Tuple[bool, str]] = None


def _build_dir() -> str:
    """Where torch's JIT puts gsplat's extension (for error messages); best effort."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return _get_build_directory("gsplat_cuda", verbose=False)
    except Exception:  # noqa: BLE001 - private torch API, only used for a message
        return "~/.cache/torch_extensions/<python>_<cuda>/gsplat_cuda"


def arch_list_problem(device: int | str | torch.device | None = None) -> Optional[str]:
    """A message if ``TORCH_CUDA_ARCH_LIST`` is set and does not cover the GPU's compute capability
    (kernels built from it cannot run here), else None. Entries look like "8.9", "9.0+PTX", "sm_90";
    separators are spaces or semicolons."""
    raw = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not raw or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    want = f"{major}.{minor}"
    have = []
    for tok in raw.replace(";", " ").split():
        tok = tok.split("+")[0].strip().lower().replace("sm_", "")
        if tok.isdigit() and len(tok) >= 2:      # "90" -> "9.0"
            tok = f"{tok[:-1]}.{tok[-1]}"
        have.append(tok)
    if want in have:
        return None
    return (f"TORCH_CUDA_ARCH_LIST={raw!r} does not include this GPU's compute capability {want} "
            f"({torch.cuda.get_device_name(device)}): set TORCH_CUDA_ARCH_LIST=\"{want}\" and delete "
            f"{_build_dir()} so gsplat rebuilds for it")


def _smoke_render(device: torch.device) -> None:
    """One Gaussian in front of an identity camera, 16x16: its centre pixel must be about opacity."""
    from gsplat.rendering import rasterization

    f32 = dict(dtype=torch.float32, device=device)
    means = torch.tensor([[0.0, 0.0, 2.0]], **f32)                      # [1,3]
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], **f32)                 # [1,4]
    scales = torch.full((1, 3), 0.2, **f32)                             # [1,3]
    opac = torch.tensor([0.5], **f32)                                   # [1]
    colors = torch.ones(1, 3, **f32)                                    # [1,3]
    viewmats = torch.eye(4, **f32)[None]                                # [1,4,4]
    Ks = torch.tensor([[[20.0, 0.0, 8.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]]], **f32)  # [1,3,3]
    img, alpha, _ = rasterization(means, quats, scales, opac, colors, viewmats, Ks, 16, 16, packed=False)
    centre = float(alpha[0, 8, 8, 0])
    if not 0.4 < centre < 0.51:   # ~0.5 * exp(-small) for the pixel next to the mean
        raise RuntimeError(f"smoke render gave alpha {centre:.4f} at the centre pixel, expected ~0.5")


def extension_status() -> Tuple[bool, str]:
    """``(True, "ok")`` once gsplat's CUDA extension is built, loaded and renders correctly on the
    current GPU, else ``(False, reason)``. The first call may compile the kernels (minutes); the
    result is cached for the process."""
    global _STATUS
    if _STATUS is not None:
        return _STATUS
    if not torch.cuda.is_available():
        _STATUS = (False, "CUDA is not available")
        return _STATUS
    problem = arch_list_problem()
    if problem:
        warnings.warn(f"gsplat_backend: {problem}", RuntimeWarning, stacklevel=2)
    try:
        from gsplat.cuda._backend import _C
    except Exception as e:  # noqa: BLE001 - any build/load failure is reported, not raised
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        _STATUS = (False, f"building/loading gsplat's CUDA extension failed ({type(e).__name__}: {msg}); "
                          f"build dir {_build_dir()}")
        return _STATUS
    if _C is None:
        _STATUS = (False, f"gsplat found no CUDA toolkit (nvcc) to compile its kernels; install one matching "
                          f"torch's CUDA {torch.version.cuda} (see environment.yml) or set CUDA_HOME")
        return _STATUS
    try:
        _smoke_render(torch.device("cuda", torch.cuda.current_device()))
    except Exception as e:  # noqa: BLE001 - "no kernel image", absurd OOM, wrong values
        cap = ".".join(map(str, torch.cuda.get_device_capability()))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _STATUS = (False, f"gsplat's CUDA kernels do not run on this GPU (compute capability {cap}): {msg}. "
                          f"Probably built for another architecture: delete {_build_dir()} and rebuild with "
                          f"TORCH_CUDA_ARCH_LIST=\"{cap}\"")
        return _STATUS
    _STATUS = (True, "ok")
    return _STATUS


def available() -> bool:
    """True when the gsplat backend can render here (see :func:`extension_status`)."""
    return extension_status()[0]


def render_gsplat(
    gaussians: dict,
    camera,
    features: Optional[Tensor] = None,  # [N, D] rendered instead of SH colours
    *,
    bg=None,                            # [D] tensor / sequence, or None (= zeros)
    sh_degree: Optional[int] = None,
    near: float = 0.01,
    far: float = 1e10,
    tile_size: int = 16,
    return_depth: bool = True,
):
    """Render one view with gsplat (same arguments and output as ``gaussian_renderer.render``;
    see the module docstring). Tensors must be on a CUDA device."""
    from . import RenderOutput, render   # the package is fully imported when render() calls us

    means = gaussians["means"]                                         # [N,3]
    N = means.shape[0]
    device, dtype = means.device, means.dtype
    if device.type != "cuda":
        raise ValueError(f"render: backend 'gsplat' needs CUDA tensors, the Gaussians are on {device} "
                         f"(use backend='auto', 'cpp' or 'torch' on CPU)")
    if N == 0:   # nothing to rasterize: the torch backend returns the background exactly
        return render(gaussians, camera, features, backend="torch", bg=bg, sh_degree=sh_degree, near=near,
                      far=far, tile_size=tile_size, return_depth=return_depth)
    ok, reason = extension_status()
    if not ok:
        raise RuntimeError(f"render: backend 'gsplat' is not usable: {reason}")
    from gsplat.rendering import rasterization

    f32 = torch.float32
    W, H = int(camera.width), int(camera.height)
    viewmats = torch.as_tensor(camera.viewmat, dtype=f32, device=device)[None]   # [1,4,4]
    Ks = torch.as_tensor(camera.K, dtype=f32, device=device)[None]               # [1,3,3]
    quats = gaussians["quats"].to(f32)                                           # [N,4]
    scales = torch.exp(gaussians["scales"].to(f32))                              # [N,3]
    opacities = torch.sigmoid(gaussians["opacities"].reshape(N).to(f32))         # [N]

    if features is not None:
        if features.dim() != 2 or features.shape[0] != N:
            raise ValueError(f"render: features must be [{N},D], got {list(features.shape)}")
        colors, deg = features.to(f32), None                                     # [N,D]
        D = colors.shape[1]
    else:
        colors = torch.cat([gaussians["sh0"], gaussians["shN"]], dim=1).to(f32)  # [N,K,3]
        max_deg = math.isqrt(colors.shape[1]) - 1
        deg = max_deg if sh_degree is None else int(sh_degree)
        if not 0 <= deg <= min(max_deg, 3):
            raise ValueError(f"render: sh_degree {deg} needs {(deg + 1) ** 2} SH coefficients, "
                             f"the Gaussians have {colors.shape[1]}")
        D = 3

    backgrounds = None
    if bg is not None:
        bg_vec = torch.as_tensor(bg, dtype=f32, device=device).reshape(-1)
        if bg_vec.numel() != D:
            raise ValueError(f"render: bg must have {D} values (one per channel), got {bg_vec.numel()}")
        backgrounds = bg_vec[None]                                               # [1,D]

    img, alpha, meta = rasterization(
        means.to(f32), quats, scales, opacities, colors, viewmats, Ks, W, H,
        near_plane=near, far_plane=far, eps2d=EPS2D, sh_degree=deg, packed=False, tile_size=tile_size,
        backgrounds=backgrounds, render_mode="RGB+ED" if return_depth else "RGB", rasterize_mode="classic",
        absgrad=False)
    # img [1,H,W,D(+1)], alpha [1,H,W,1]; meta["means2d"] [1,N,2], meta["radii"] [1,N,2] int32
    color = img[0, ..., :D]
    depth = img[0, ..., D:D + 1] if return_depth else None
    alpha = alpha[0]
    if dtype != f32 and dtype.is_floating_point:
        color, alpha = color.to(dtype), alpha.to(dtype)
        depth = depth.to(dtype) if depth is not None else None
    radii = meta["radii"]
    return RenderOutput(color=color, alpha=alpha, depth=depth, means2d=meta["means2d"], radii=radii,
                        visible=(radii[0] > 0).all(dim=-1), width=W, height=H)
