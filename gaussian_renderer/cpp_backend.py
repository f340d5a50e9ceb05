"""C++/OpenMP CPU rasterizer: same contract as ``torch_backend.rasterize_torch``, 20-50x faster.

The kernel (``csrc/rasterize.cpp``) composites each 16x16 tile on one OpenMP thread, vectorised
over the tile pixels each Gaussian can reach, and has a hand-written backward (back-to-front, as
gsplat 1.5.3's CUDA kernel). It is built on first use with ``torch.utils.cpp_extension`` (needs
g++ and ninja; ~10 s) into ``$COS3D_EXT_CACHE/<torch version>-<hash>`` (default root
``~/.cache/cos3d/torch_extensions``); the hash covers the source, the flags and the python
version, so an edited source never reuses a stale build. If the build fails, :func:`available`
returns False and logs one warning with the reason; ``render(..., backend="auto")`` then falls
back to the torch backend.

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

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .torch_backend import MAX_ALPHA, check_raster_inputs

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).resolve().parent / "csrc" / "rasterize.cpp"
# Portable flags: the hot loops carry their own AVX2 / AVX-512 clones (see rasterize.cpp), so no
# -march=native; no -ffast-math (the kernel's comparisons must match the torch reference).
_CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]  # torch adds its own -std=c++ flag
_LDFLAGS = ["-fopenmp"]
_TILE_SIZES = (8, 16, 32)

_state: dict = {}  # "ok": bool, "reason": str, "ops": the torch.ops namespace once loaded


def _build_dir() -> Path:
    h = hashlib.sha256()
    h.update(_SOURCE.read_bytes())
    h.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    h.update(sys.version.encode())
    root = os.environ.get("COS3D_EXT_CACHE") or str(Path.home() / ".cache" / "cos3d" / "torch_extensions")
    tv = torch.__version__.replace("+", "_")
    return Path(root) / f"{tv}-{h.hexdigest()[:16]}"


def _summarise(msg: str) -> str:
    """The informative line of a build log: a compiler 'error:', a missing tool, else the last line."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    keys = ("error:", "not found", "no such file", "command not found")
    hit = next((ln for ln in lines if any(k in ln.lower() for k in keys)), None)
    if hit is None:
        rest = [ln for ln in lines if not ln.startswith("ninja:")]
        hit = (rest or lines or [""])[-1]
    return hit[:300]


def _load() -> None:
    if "ok" in _state:
        return
    try:
        if not hasattr(torch.ops, "cos3d_raster") or not hasattr(torch.ops.cos3d_raster, "rasterize_fwd"):
            import warnings

            # its import logs "No CUDA runtime is found, using CUDA_HOME=..." on CPU machines: not our concern
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils import cpp_extension
            build = _build_dir()
            build.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # is_python_module=False: the library registers torch.ops.cos3d_raster.* on load.
                # load() appends to the flag lists it is given: pass copies (the hash uses them)
                cpp_extension.load(name=f"cos3d_raster_{build.name.split('-')[-1]}",
                                   sources=[str(_SOURCE)], extra_cflags=list(_CFLAGS),
                                   extra_ldflags=list(_LDFLAGS), build_directory=str(build),
                                   is_python_module=False, verbose=False)
        _state["ops"] = torch.ops.cos3d_raster
        _state["ok"], _state["reason"] = True, ""
    except Exception as e:  # no compiler, no ninja, compile error, read-only cache, ...
        reason = f"{type(e).__name__}: {_summarise(str(e))}"
        _state["ok"], _state["reason"] = False, reason
        log.warning("gaussian_renderer: the C++ rasterizer could not be built (%s); "
                    "use the torch backend", reason)


def available() -> bool:
    """True if the C++ extension builds and loads (built on the first call, then cached; never raises)."""
    try:
        _load()
    except Exception as e:  # pragma: no cover - _load already catches everything
        _state["ok"], _state["reason"] = False, repr(e)
    return bool(_state.get("ok"))


def unavailable_reason() -> str:
    """Why :func:`available` is False ('' when it is True)."""
    available()
    return _state.get("reason", "")


def _ops():
    if not available():
        raise RuntimeError(f"rasterize_cpp: the C++ extension is not available ({_state['reason']})")
    return _state["ops"]


class _RasterizeCpp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, bg, tile_offsets, flatten_ids,
                width, height, tile_size):
        ops = _ops()
        D = colors.shape[1]
        color = torch.empty(height, width, D, dtype=torch.float32)   # [H,W,D]
        T = torch.empty(height, width, dtype=torch.float32)          # [H,W] final transmittance
        last = torch.empty(height, width, dtype=torch.int32)         # [H,W] last contributor (tile-local)
        ext = torch.empty(colors.shape[0], 4, dtype=torch.float32)   # [N,4] per-Gaussian pixel bounds
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
