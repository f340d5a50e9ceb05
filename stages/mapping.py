"""Stage 2: instance -> language mapping (COS3D ``construct_collobrative_kernel.py`` + the language
field of ``Grounding_3D.py``, docs/method.md §4).

1. Render the instance field in every view (all cameras: COS3D builds this scene with eval=False),
   normalise per pixel and collect one (mean feature, CLIP row) pair per SAM mask of the level,
   plus the median pixel-to-mask-mean distance d -> ``<run>/mapping/pairs.pt``.
2. Map every Gaussian's instance feature to a 512-D language feature (kernel regression over the
   pairs, or a small MLP fitted on them), smooth over the 10 nearest Gaussians in xyz
   -> ``<run>/mapping/language_field.pt``, tagged with a hash of everything it was computed from.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from arguments import Config
from scene.atomic import torch_save
from scene.views import SceneData
from scene.errors import StageError
from scene.gaussian_model import describe_torch_load_error, load_ply
from scene.language_features import check_ids, load_clip, load_seg
from scene.language_field import DenseField, KernelField, factor_kernel_field, from_state, to_state
from scene.mapping import PairCollector, fit_mlp, inputs_hash, kernel_mapping, knn_indices, mlp_mapping, smooth_knn
from scene.rundir import check_fresh

from .rendering import render_features

STAGE = "mapping"
FIELD_VERSION = 2  # 2: the kernel field stored factored (scene/language_field.py)


def instance_source(run_dir: Path) -> Path:
    ply = Path(run_dir) / "instance" / "point_cloud.ply"
    if not ply.is_file():
        raise StageError(f"{ply} not found: run `python train.py --stage instance -m {run_dir}` first")
    return ply


def load_instance_model(run_dir: Path, device) -> dict:
    params = load_ply(instance_source(run_dir), device=device)
    if "ins_feat" not in params:
        raise StageError(f"{instance_source(run_dir)} has no semantic_* properties (not an instance-field PLY)")
    return params


@torch.no_grad()
def collect_pairs(cfg: Config, scene: SceneData, params: dict) -> dict:
    """Mask-level (instance feature, CLIP row) pairs over every view; the feature folder was checked in
    full by the caller (``train.py``)."""
    m = cfg.mapping
    folder = cfg.instance.features_folder
    frozen = {k: v for k, v in params.items() if k != "ins_feat"}
    collector = PairCollector()
    for cam in tqdm(scene.all_cameras, desc="mapping: pairs", disable=not cfg.run.progress, dynamic_ncols=True):
        feat_map, _ = render_features(frozen, params["ins_feat"], cam, cfg)
        seg = load_seg(scene.source_path, cam, m.sam_level, folder).to(feat_map.device)
        clip = load_clip(scene.source_path, cam, folder).to(feat_map.device)
        check_ids(seg, clip.shape[0], f"{scene.source_path}/{folder}/{cam.image_name}_s.npy")
        collector.add_view(feat_map, seg, clip)
    pairs = collector.result()
    if pairs["feature"].shape[0] == 0:
        raise StageError(f"{scene.source_path}/{folder}: no SAM masks at level {m.sam_level} in any view")
    return pairs


def field_hash(cfg: Config, params: dict, pairs: dict) -> str:
    """What the language field depends on: the instance features, the positions (smoothing), the pairs
    and every mapping setting that changes the result."""
    m = cfg.mapping
    settings = {"v": FIELD_VERSION, "kind": m.kind, "top_k": m.top_k, "sigma": m.sigma, "smooth_k": m.smooth_k,
                "factored": m.factored and m.kind == "kernel",
                "mlp": [m.mlp_epochs, m.mlp_lr, m.mlp_batch_size, list(m.mlp_hidden), m.mlp_cos_weight],
                "seed": cfg.run.seed}
    return inputs_hash(params["ins_feat"], params["means"], pairs["feature"], pairs["clip"], settings)


def compute_language_field(cfg: Config, params: dict, pairs: dict):
    """The language field of the Gaussians (unit rows): a factored ``KernelField`` (kernel mapping with
    ``mapping.factored``) or a ``DenseField`` [N, C] (scene/language_field.py)."""
    m = cfg.mapping
    feats = params["ins_feat"]
    anchors = pairs["feature"].to(feats.device)
    clips = pairs["clip"].to(feats.device)
    if m.kind == "kernel" and m.factored:
        nbr = knn_indices(params["means"], m.smooth_k, m.chunk_size) if m.smooth_k > 1 else None
        return factor_kernel_field(feats, anchors, clips, m.top_k, m.sigma, nbr, m.chunk_size, xyz=params["means"])
    if m.kind == "kernel":
        lang = kernel_mapping(feats, anchors, clips, top_k=m.top_k, sigma=m.sigma, chunk_size=m.chunk_size)
    elif m.kind == "mlp":
        model = fit_mlp(anchors, clips, epochs=m.mlp_epochs, lr=m.mlp_lr, batch_size=m.mlp_batch_size,
                        cos_weight=m.mlp_cos_weight, hidden=tuple(m.mlp_hidden), seed=cfg.run.seed,
                        progress=cfg.run.progress)
        lang = mlp_mapping(model, feats, chunk_size=m.chunk_size)
    else:
        raise StageError(f"mapping.kind must be 'kernel' or 'mlp', got {m.kind!r}")
    if m.smooth_k > 1:
        lang = smooth_knn(params["means"], lang, k=m.smooth_k, chunk_size=m.chunk_size)
    return DenseField(lang)


def save_field(path: Path, cfg: Config, field, digest: str) -> None:
    torch_save({"version": FIELD_VERSION, "hash": digest, "kind": cfg.mapping.kind, **to_state(field)}, path)


def run_mapping(cfg: Config, run_dir: Path, scene: SceneData, device) -> dict:
    out_dir = Path(run_dir) / STAGE
    t0 = time.time()
    params = load_instance_model(run_dir, device)
    pairs = collect_pairs(cfg, scene, params)
    torch_save({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in pairs.items()}, out_dir / "pairs.pt")
    t1 = time.time()
    lang = compute_language_field(cfg, params, pairs)
    save_field(out_dir / "language_field.pt", cfg, lang, field_hash(cfg, params, pairs))
    return {"n_pairs": int(pairs["feature"].shape[0]), "median_distance": float(pairs["median_distance"]),
            "n_gaussians": int(lang.shape[0]), "kind": cfg.mapping.kind, "factored": isinstance(lang, KernelField),
            "seconds_pairs": round(t1 - t0, 1), "seconds_field": round(time.time() - t1, 1)}


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise StageError(f"{path}: unreadable ({describe_torch_load_error(e)}); redo the mapping with "
                         f"`python train.py --stage mapping -m {path.parent.parent} --force`") from None


def load_language_field(cfg: Config, run_dir: Path, params: dict) -> tuple:
    """(the cached language field, d): a ``KernelField`` or ``DenseField`` on the model's device
    (scene/language_field.py), recomputed (and re-cached) when a mapping setting it depends on changed.
    The mapping stage must be finished and made from the current instance field."""
    out_dir = Path(run_dir) / STAGE
    check_fresh(run_dir, "instance", "rgb", "query")
    check_fresh(run_dir, STAGE, "instance", "query")
    pairs = _load(out_dir / "pairs.pt")
    want = field_hash(cfg, params, pairs)
    path = out_dir / "language_field.pt"
    cached = _load(path) if path.is_file() else None
    device = params["means"].device
    if cached is None or cached.get("hash") != want:
        print(f"[query] {path.name} was made with other mapping settings: recomputing")
        lang = compute_language_field(cfg, params, pairs)
        save_field(path, cfg, lang, want)
        if isinstance(lang, DenseField):  # what a later load returns: the half-float values
            lang = from_state(to_state(lang), device)
        return lang, float(pairs["median_distance"])
    return from_state(cached, device), float(pairs["median_distance"])
