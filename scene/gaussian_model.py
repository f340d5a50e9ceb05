"""Gaussians as a dict of tensors, the standard 3DGS PLY format, and training checkpoints.

Per-Gaussian state is a plain ``dict[str, Tensor]`` (gsplat style; ``gsplat.strategy.DefaultStrategy``
densifies such a dict of ``torch.nn.Parameter`` and carries every key through split/duplicate/prune):

=============  ==============  =====================================================================
key            shape           meaning (raw, *not* activated)
=============  ==============  =====================================================================
``means``      [N,3]           centres, world coordinates
``scales``     [N,3]           LOG of the per-axis standard deviations
``quats``      [N,4]           rotation quaternion (w, x, y, z), unnormalised
``opacities``  [N]             LOGIT of the opacity
``sh0``        [N,1,3]         DC spherical-harmonic coefficient per colour channel
``shN``        [N,K-1,3]       higher SH coefficients, K = (degree+1)^2 (K-1 = 0, 3, 8, 15)
``ins_feat``   [N,D]           optional instance features (COS3D stage 1: D = 16, raw, unnormalised)
=============  ==============  =====================================================================

The SH degree is not stored; it is ``sh_degree_of(params)`` (from ``shN.shape[1]``).

PLY files are the graphdeco-inria 3DGS format (``scene/gaussian_model.py::save_ply`` of the
reference implementation), byte-compatible: ``binary_little_endian 1.0``, one element ``vertex``,
float32 properties ``x y z nx ny nz f_dc_0..2 f_rest_0..3(K-1)-1 opacity scale_0..2 rot_0..3``
followed, for COS3D instance fields, by ``semantic_0..D-1``. ``f_rest`` is channel-major:
``f_rest_{c*(K-1)+k} = shN[:, k, c]``.

Checkpoints are ``torch.save`` of plain dicts/tensors (loadable with ``weights_only=True``)::

    {"format_version": 1, "step": int, "params": {key: Tensor},
     "optimizers": {name: optimizer.state_dict()}, "strategy_state": dict, "extra": dict}
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch

from gaussian_renderer.sh import SH_C0

from .atomic import atomic_path, torch_save

CHECKPOINT_FORMAT_VERSION = 1
REQUIRED_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
# number of f_rest_* properties -> SH degree (3 * ((d+1)^2 - 1))
_N_REST_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}

PathLike = Union[str, os.PathLike]
Params = dict  # dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# spherical-harmonic helpers
# ----------------------------------------------------------------------------------------------
def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """rgb [..., 3] in [0,1] -> DC SH coefficient [..., 3] (3DGS RGB2SH)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh: torch.Tensor) -> torch.Tensor:
    """DC SH coefficient [..., 3] -> rgb [..., 3] (3DGS SH2RGB; not clamped)."""
    return sh * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    """Number of SH basis functions up to ``degree`` inclusive: (degree+1)^2."""
    if int(degree) != degree or degree < 0:
        raise ValueError(f"SH degree must be a non-negative integer, got {degree!r}")
    return (int(degree) + 1) ** 2


def sh_degree_of(params: Mapping[str, torch.Tensor]) -> int:
    """SH degree of a Gaussian dict, from ``shN`` [N,K-1,3]."""
    k = params["shN"].shape[1] + 1
    d = int(round(math.sqrt(k))) - 1
    if (d + 1) ** 2 != k:
        raise ValueError(f"shN has {k - 1} coefficients per channel, not (d+1)^2-1 for any degree d")
    return d


def _resize_shN(shN: torch.Tensor, sh_degree: int) -> torch.Tensor:
    """shN [N,K-1,3] -> [N,K'-1,3] for degree ``sh_degree``: truncate or pad with zeros."""
    want = num_sh_bases(sh_degree) - 1
    have = shN.shape[1]
    if want <= have:
        return shN[:, :want].contiguous()
    pad = shN.new_zeros(shN.shape[0], want - have, shN.shape[2])
    return torch.cat([shN, pad], dim=1)


# ----------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------
def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"init_opacity must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


def init_from_points(
    xyz: torch.Tensor,  # [P,3] point positions
    rgb: torch.Tensor,  # [P,3] float colours in [0,1]
    sh_degree: int = 3,
    init_opacity: float = 0.1,
    device: Union[str, torch.device] = "cpu",
) -> Params:
    """3DGS initialisation from a point cloud (``GaussianModel.create_from_pcd`` of graphdeco).

    * scale (all 3 axes) = log(sqrt(max(d2, 1e-7))), d2 = mean squared distance to the 3 nearest
      OTHER points (simple-knn ``distCUDA2`` semantics; fewer neighbours if P < 4; a single point
      gets d2 = 1e-7).
    * quats = (1,0,0,0); opacities = logit(init_opacity); sh0 = rgb_to_sh(rgb); shN = 0.

    Returns a float32 dict (see module docstring) on ``device``; plain tensors, no grad.
    """
    from scipy.spatial import cKDTree

    xyz_np = np.asarray(torch.as_tensor(xyz).detach().cpu().numpy(), dtype=np.float64)
    rgb_t = torch.as_tensor(rgb).detach().to("cpu", torch.float32)
    if xyz_np.ndim != 2 or xyz_np.shape[1] != 3:
        raise ValueError(f"init_from_points: xyz must be [P,3], got {tuple(xyz_np.shape)}")
    P = xyz_np.shape[0]
    if P == 0:
        raise ValueError("init_from_points: the point cloud is empty (P == 0)")
    if tuple(rgb_t.shape) != (P, 3):
        raise ValueError(f"init_from_points: rgb must be [{P},3], got {tuple(rgb_t.shape)}")
    if not np.isfinite(xyz_np).all():
        raise ValueError("init_from_points: xyz contains NaN or inf")

    n_nb = min(3, P - 1)
    if n_nb == 0:
        d2 = np.zeros(1)
    else:
        # k = n_nb + 1 includes the query point itself at distance 0; with duplicates another
        # zero-distance point may come first, but the multiset of distances is the same.
        dist, _ = cKDTree(xyz_np).query(xyz_np, k=n_nb + 1)
        d2 = (dist[:, 1:] ** 2).mean(axis=1)
    d2 = np.maximum(d2, 1e-7)  # 3DGS: torch.clamp_min(distCUDA2(...), 0.0000001)
    log_scale = np.log(np.sqrt(d2))

    K = num_sh_bases(sh_degree)
    params = {
        "means": torch.from_numpy(xyz_np).float(),
        "scales": torch.from_numpy(log_scale).float()[:, None].repeat(1, 3),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(P, 1),
        "opacities": torch.full((P,), _logit(init_opacity), dtype=torch.float32),
        "sh0": rgb_to_sh(rgb_t)[:, None, :].contiguous(),
        "shN": torch.zeros(P, K - 1, 3),
    }
    return {k: v.to(device) for k, v in params.items()}


def random_init(
    n: int,
    extent: float,
    sh_degree: int = 3,
    init_opacity: float = 0.1,
    device: Union[str, torch.device] = "cpu",
    seed: Optional[int] = None,
) -> Params:
    """3DGS random init: ``n`` points uniform in the cube [-extent, extent]^3, uniform random colours
    in [0,1], then ``init_from_points``. ``seed`` makes it deterministic (own generator)."""
    if n <= 0:
        raise ValueError(f"random_init: n must be positive, got {n}")
    if not extent > 0:
        raise ValueError(f"random_init: extent must be positive, got {extent}")
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    xyz = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2.0 - 1.0) * extent
    rgb = torch.rand(n, 3, generator=g)
    return init_from_points(xyz, rgb, sh_degree=sh_degree, init_opacity=init_opacity, device=device)


def make_parameters(params: Mapping[str, torch.Tensor], requires_grad: bool = True) -> torch.nn.ParameterDict:
    """Wrap a Gaussian dict as a ``torch.nn.ParameterDict`` (what gsplat's strategies expect)."""
    return torch.nn.ParameterDict(
        {k: torch.nn.Parameter(v.detach().clone(), requires_grad=requires_grad) for k, v in params.items()}
    )


def _check_params(params: Mapping[str, torch.Tensor], where: str) -> int:
    """Validate shapes of a Gaussian dict; returns N."""
    missing = [k for k in REQUIRED_KEYS if k not in params]
    if missing:
        raise ValueError(f"{where}: Gaussian dict is missing keys {missing}")
    N = params["means"].shape[0]
    expect = {"means": (N, 3), "scales": (N, 3), "quats": (N, 4), "opacities": (N,), "sh0": (N, 1, 3)}
    for k, shp in expect.items():
        if tuple(params[k].shape) != shp:
            raise ValueError(f"{where}: {k} must have shape {shp}, got {tuple(params[k].shape)}")
    shN = params["shN"]
    if shN.ndim != 3 or shN.shape[0] != N or shN.shape[2] != 3:
        raise ValueError(f"{where}: shN must be [N,K-1,3] with N={N}, got {tuple(shN.shape)}")
    return N


# ----------------------------------------------------------------------------------------------
# PLY i/o
# ----------------------------------------------------------------------------------------------
def ply_property_names(sh_degree: int, n_semantic: int = 0) -> list:
    """Vertex property names, in graphdeco 3DGS order (+ COS3D ``semantic_*``)."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
        + [f"semantic_{i}" for i in range(n_semantic)]
    )


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def save_ply(
    path: PathLike,
    params: Mapping[str, torch.Tensor],
    sh_degree: Optional[int] = None,
    semantic: Optional[torch.Tensor] = None,  # [N,D] written as semantic_0..D-1
) -> Path:
    """Write the standard graphdeco 3DGS PLY (see module docstring); returns the path.

    ``sh_degree``: degree to write (shN truncated / zero-padded); default: the dict's own degree.
    ``semantic``: [N,D] features written raw as ``semantic_0..D-1``; when None, ``params["ins_feat"]``
    is written if present (so save -> load round-trips the whole dict). Unknown keys are ignored.
    The file is written under a temporary name and renamed (atomic); parent dirs are created.
    """
    from plyfile import PlyData, PlyElement

    path = Path(path)
    N = _check_params(params, f"save_ply({path})")
    shN = params["shN"]
    if sh_degree is None:
        sh_degree = sh_degree_of(params)
    shN = _resize_shN(shN.detach(), sh_degree)
    if semantic is None:
        semantic = params.get("ins_feat")
    n_sem = 0
    if semantic is not None:
        if semantic.ndim != 2 or semantic.shape[0] != N:
            raise ValueError(f"save_ply({path}): semantic must be [N={N},D], got {tuple(semantic.shape)}")
        n_sem = semantic.shape[1]

    names = ply_property_names(sh_degree, n_sem)
    columns = [
        _np32(params["means"]),
        np.zeros((N, 3), np.float32),  # normals, always 0 in 3DGS
        _np32(params["sh0"][:, 0, :]),
        _np32(shN.transpose(1, 2).reshape(N, 3 * shN.shape[1])),  # [N,3,K-1] flattened: channel-major (N may be 0)
        _np32(params["opacities"])[:, None],
        _np32(params["scales"]),
        _np32(params["quats"]),
    ]
    if n_sem:
        columns.append(_np32(semantic))
    data = np.concatenate(columns, axis=1)
    assert data.shape[1] == len(names)
    vertex = np.empty(N, dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        vertex[n] = data[:, i]

    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(tmp))
    return path


def _numbered(names: list, prefix: str, path: Path) -> int:
    """Count of ``prefix<i>`` properties; they must be exactly prefix0..prefix{n-1}."""
    idx = sorted(int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())
    if idx != list(range(len(idx))):
        raise ValueError(f"{path}: {prefix}* properties are not numbered 0..{len(idx) - 1}: {idx}")
    return len(idx)


def _ply_error(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    what = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"truncated: {what}" if "end-of-file" in text or "EOF" in text else what


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def check_ply(path: PathLike) -> int:
    """Cheap check of a 3DGS PLY before it is used: the header parses and, for a binary file with
    fixed-size vertex rows, the file is long enough for the vertex count it declares (a truncated
    copy is caught without reading the data). Returns the vertex count; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: PLY file not found")
    if not path.is_file():
        raise ValueError(f"{path}: is a folder, not a PLY file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    end = head.find(b"end_header\n")
    if not head.startswith(b"ply") or end < 0:
        what = "empty file" if size == 0 else ("truncated header" if head.startswith(b"ply") else "no 'ply' header")
        raise ValueError(f"{path}: not a readable PLY file ({what}): re-export or re-copy it")
    lines = head[:end].decode("ascii", "replace").splitlines()
    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format ") and len(ln.split()) > 1), "")
    n_vertex, row, current, fixed = None, 0, None, True
    for ln in lines:
        tok = ln.split()
        if tok[:1] == ["element"] and len(tok) == 3:
            current = tok[1]
            if current == "vertex":
                try:
                    n_vertex = int(tok[2])
                except ValueError:
                    raise ValueError(f"{path}: not a readable PLY file (bad vertex count {tok[2]!r})") from None
        elif tok[:1] == ["property"] and current == "vertex":
            if len(tok) == 3 and tok[1] in _PLY_SIZES:
                row += _PLY_SIZES[tok[1]]
            else:
                fixed = False  # a list property: rows have no fixed size
    if n_vertex is None:
        raise ValueError(f"{path}: PLY has no 'vertex' element")
    if fmt.startswith("binary") and fixed and len([ln for ln in lines if ln.startswith("element")]) == 1:
        want = end + len(b"end_header\n") + n_vertex * row
        if size < want:
            raise ValueError(f"{path}: PLY file is truncated ({size} bytes, its header declares {n_vertex} "
                             f"Gaussians = {want} bytes): re-export or re-copy it")
    return n_vertex


def load_ply(
    path: PathLike,
    device: Union[str, torch.device] = "cpu",
    sh_degree: Optional[int] = None,
) -> Params:
    """Read a 3DGS PLY into a float32 Gaussian dict (+ ``ins_feat`` [N,D] if ``semantic_*`` exist).

    Properties are looked up by name (any order, any numeric type). The SH degree is inferred from
    the number of ``f_rest_*`` (0, 9, 24, 45 -> 0..3); with ``sh_degree`` given, shN is truncated or
    zero-padded to that degree. Errors are ValueError / FileNotFoundError naming the file.
    """
    from plyfile import PlyData

    path = Path(path)
    check_ply(path)
    try:
        ply = PlyData.read(str(path), mmap=False)
    except Exception as e:  # plyfile raises several types (header parse, EOF, unicode, ...)
        raise ValueError(f"{path}: not a readable PLY file ({_ply_error(e)})") from None
    try:
        vert = ply["vertex"]
    except KeyError:
        raise ValueError(f"{path}: PLY has no 'vertex' element") from None
    names = [p.name for p in vert.properties]
    data = vert.data

    n_rest = _numbered(names, "f_rest_", path)
    n_sem = _numbered(names, "semantic_", path)
    if n_rest not in _N_REST_TO_DEGREE:
        raise ValueError(f"{path}: {n_rest} f_rest_* properties; expected one of {sorted(_N_REST_TO_DEGREE)}")
    file_degree = _N_REST_TO_DEGREE[n_rest]
    required = ply_property_names(file_degree)
    required = [n for n in required if n not in ("nx", "ny", "nz")]  # normals are unused
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(f"{path}: missing PLY properties: {', '.join(missing)}")

    def cols(keys: list) -> torch.Tensor:
        if not keys:
            return torch.zeros(len(data), 0)
        arr = np.stack([np.asarray(data[k], dtype=np.float32) for k in keys], axis=1)
        return torch.from_numpy(np.ascontiguousarray(arr))

    N = len(data)
    K1 = num_sh_bases(file_degree) - 1
    params = {
        "means": cols(["x", "y", "z"]),
        "scales": cols([f"scale_{i}" for i in range(3)]),
        "quats": cols([f"rot_{i}" for i in range(4)]),
        "opacities": cols(["opacity"])[:, 0].contiguous(),
        "sh0": cols([f"f_dc_{i}" for i in range(3)])[:, None, :].contiguous(),
        # f_rest_{c*(K-1)+k} = shN[:, k, c]
        "shN": cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(N, 3, K1).transpose(1, 2).contiguous(),
    }
    if sh_degree is not None:
        params["shN"] = _resize_shN(params["shN"], sh_degree)
    if n_sem:
        params["ins_feat"] = cols([f"semantic_{i}" for i in range(n_sem)])
    return {k: v.to(device) for k, v in params.items()}


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(
    path: PathLike,
    params: Mapping[str, torch.Tensor],
    step: int,
    extra: Optional[dict] = None,
    optimizers=None,  # Mapping[str, Optimizer | state_dict] or a single Optimizer (stored as "default")
    strategy_state: Optional[dict] = None,
) -> Path:
    """Save a training checkpoint (format in the module docstring); atomic (temp + os.replace).

    Only plain containers, numbers, strings and tensors are stored, so ``load_checkpoint`` reads
    it with ``torch.load(weights_only=True)``; ``extra`` must keep to those types too."""
    path = Path(path)
    if optimizers is None:
        opt_states = {}
    elif hasattr(optimizers, "state_dict") and not isinstance(optimizers, Mapping):
        opt_states = {"default": optimizers.state_dict()}
    else:
        opt_states = {k: (o.state_dict() if hasattr(o, "state_dict") else o) for k, o in optimizers.items()}
    ckpt = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": int(step),
        "params": {k: v.detach().clone() for k, v in params.items()},
        "optimizers": opt_states,
        "strategy_state": dict(strategy_state) if strategy_state is not None else {},
        "extra": dict(extra) if extra is not None else {},
    }
    torch_save(ckpt, path)
    return path


def describe_torch_load_error(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words and without torch's advice
    to retry with ``weights_only=False`` (unsafe for a file of unknown origin: it runs arbitrary code)."""
    text = str(e)
    low = text.lower()
    if (isinstance(e, EOFError) or "central directory" in low or "zip archive" in low
            or re.search(r"\beof\b|end of file|ran out of input", low)):
        return "the file is truncated or corrupt (incomplete zip archive)"
    if "weights only load failed" in low:
        if "unsupported global" in low or "unsupported class" in low:
            return ("it holds Python objects other than tensors and plain containers, which are not "
                    "unpickled (that could run arbitrary code)")
        return "it is not a torch.save file (garbage or another format)"
    first = text.strip().splitlines()[0][:160] if text.strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint``; tensors are mapped to ``device``.

    Returns ``{"format_version", "step", "params", "optimizers", "strategy_state", "extra"}``.
    Uses ``weights_only=True`` (no arbitrary unpickling). Errors name the file and, since a checkpoint
    is only ever resumed from, say how to start over (``--force``). There is no fallback to an older
    checkpoint: ``save_checkpoint`` replaces the file atomically, so a bad one is a damaged or foreign
    file, and resuming from anything but the stage's own last state would mix runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    restart = ("cannot resume from it: run the same command with --force to restart this stage "
               "(the checkpoint is discarded)")
    try:
        ckpt = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a valid COS3D checkpoint, {describe_torch_load_error(e)}; {restart}") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise ValueError(f"{path}: not a COS3D checkpoint (no 'format_version' entry); {restart}")
    if ckpt["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {ckpt['format_version']!r} is not supported "
            f"(expected {CHECKPOINT_FORMAT_VERSION}); {restart}"
        )
    missing = [k for k in ("step", "params") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint is missing entries {missing}; {restart}")
    if not isinstance(ckpt["params"], dict) or not all(torch.is_tensor(v) for v in ckpt["params"].values()):
        raise ValueError(f"{path}: checkpoint 'params' is not a dict of tensors; {restart}")
    for k in ("optimizers", "strategy_state", "extra"):
        ckpt.setdefault(k, {})
    return ckpt
