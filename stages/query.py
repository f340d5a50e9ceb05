"""Inference: text queries -> per-Gaussian selections -> rendered masks of the labelled frames.

* ``run_queries``: relevancy of every Gaussian's language feature to each query (canonical
  negatives), per-query rescale, then the selection of ``query.mode`` (COS3D's collaborative
  refinement by default) -> ``<run>/queries/<query>.npy`` (bool [N]) + ``queries/index.json``.
* ``render_selections``: each selection rendered alone in every labelled frame on a white background;
  alpha > 0.7 -> ``<run>/renders/<frame>/<query>.png`` (0/255), colour -> ``<run>/renders_rgb/...``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from arguments import Config
from gaussian_renderer import render
from scene.grounding import relevancy, rescale, select

from .mapping import load_instance_model, load_language_field
from scene.atomic import atomic_path, np_save, write_json
from scene.names import safe_stem
from scene.provenance import TextEncoderMismatchError, build_resolved_encoder, resolve_text_encoder

from .rundir import StageError


def label_root_of(cfg: Config) -> Path:
    """OpenGaussian's layout: ``label/`` sits beside the scene folders."""
    if cfg.eval.label_root:
        return Path(cfg.eval.label_root)
    return Path(cfg.data.source_path).resolve().parent / "label"


def scene_name(cfg: Config) -> str:
    return Path(cfg.data.source_path).resolve().name


def default_queries(cfg: Config) -> list[str]:
    """The categories of the scene's labelled frames (what LERF-OVS evaluates)."""
    from scene.lerf_eval import ensure_gt, read_gt

    if cfg.query.queries:
        return list(cfg.query.queries)
    gt = read_gt(ensure_gt(label_root_of(cfg), scene_name(cfg)))
    cats = sorted({c for frame in gt.values() for c in frame})
    if not cats:
        raise StageError(f"{label_root_of(cfg) / scene_name(cfg)}: no labelled categories; pass queries with "
                         f"--set query.queries='[\"red apple\"]'")
    return cats


def query_file(run_dir: Path, query: str) -> Path:
    return Path(run_dir) / "queries" / f"{safe_stem(query)}.npy"


def model_id(run_dir: Path) -> dict:
    """What every selection of the run depends on: the instance field and the mapping pairs (content
    hashes from their stages' done records)."""
    out = {}
    for stage in ("instance", "mapping"):
        rec = json.loads((Path(run_dir) / stage / "done.json").read_text())
        out.update({k: v["sha256"] for k, v in rec["outputs"].items()})
    return out


def build_encoder(cfg: Config, run_dir: Path | None = None):
    """(encoder, its resolved record): ``query.text_encoder: auto`` follows what made the scene's
    features (``scene/provenance.py``); an explicit choice that cannot match them is refused."""
    q = cfg.query
    try:
        resolved = resolve_text_encoder(q.text_encoder, cfg.data.source_path, cfg.instance.features_folder,
                                        q.text_table)
        cache = (Path(run_dir) / "queries" / "text_cache.pt"
                 if run_dir is not None and resolved["encoder"] == "openclip" else None)
        return build_resolved_encoder(resolved, cache_path=cache)
    except TextEncoderMismatchError as e:
        raise StageError(str(e)) from None


def run_queries(cfg: Config, run_dir: Path, queries: list[str], device) -> dict:
    q = cfg.query
    for text in queries:
        safe_stem(text)  # refuses an empty query before any work
    params = load_instance_model(run_dir, device)
    lang, d = load_language_field(cfg, run_dir, params)
    enc, enc_info = build_encoder(cfg, run_dir)
    pos = enc.encode(list(queries)).to(device)
    neg = enc.encode(list(q.negatives)).to(device)
    feats = F.normalize(params["ins_feat"], dim=-1)
    opacity = torch.sigmoid(params["opacities"])
    index_path = Path(run_dir) / "queries" / "index.json"
    old = json.loads(index_path.read_text()) if index_path.is_file() else {}
    model = model_id(run_dir)
    index = old.get("queries", {}) if old.get("model") == model else {}  # earlier queries of this model
    if old.get("queries") and not index:
        print(f"[query] the model changed since {index_path} was written: earlier queries are dropped")
    t_all = time.time()
    rel = relevancy(lang, pos, neg, temperature=q.temperature)  # [Q, N]
    t_rel = (time.time() - t_all) / max(len(queries), 1)
    for i, text in enumerate(queries):
        t0 = time.time()
        s = rescale(rel[i])
        sel = select(q.mode, s, feats, opacity, d, tau=q.score_thresh, seed_opacity=q.seed_opacity,
                     multipliers=tuple(q.multipliers), language_threshold=q.language_threshold,
                     instance_multiplier=q.instance_multiplier)
        path = query_file(run_dir, text)
        np_save(path, sel.cpu().numpy())
        index[text] = {"file": path.name, "n_selected": int(sel.sum()), "mode": q.mode,
                       "text_encoder": enc_info, "seconds": round(time.time() - t0 + t_rel, 4)}
    write_json(index_path, {"model": model, "median_distance": d, "queries": index})
    return {t: index[t] for t in queries}


def _to_png(arr: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp)


@torch.no_grad()
def render_selections(cfg: Config, run_dir: Path, scene, frames: list[str], queries: list[str], device) -> int:
    """Render every (frame, query) selection; returns the number of masks written."""
    params = {k: v for k, v in load_instance_model(run_dir, device).items() if k != "ins_feat"}
    cams = {c.image_name: c for c in scene.all_cameras}
    missing = [f for f in frames if f not in cams]
    if missing:
        raise StageError(f"labelled frames {missing[:5]} are not views of the scene {scene.source_path} "
                         f"(labels of another scene?)")
    white = torch.ones(3, device=device)
    n = 0
    for text in tqdm(queries, desc="render selections", disable=not cfg.run.progress, dynamic_ncols=True):
        path = query_file(run_dir, text)
        if not path.is_file():
            raise StageError(f"{path} not found: run the query step first")
        sel = torch.from_numpy(np.load(path)).to(device)
        if sel.shape[0] != params["means"].shape[0]:
            raise StageError(f"{path}: {sel.shape[0]} entries but the model has {params['means'].shape[0]} Gaussians "
                             f"(stale selection: re-run the query step)")
        sub = {k: v[sel] for k, v in params.items()}
        for frame in frames:
            out = render(sub, cams[frame], backend=cfg.renderer.backend, bg=white, tile_size=cfg.renderer.tile_size,
                         near=cfg.renderer.near, far=cfg.renderer.far, return_depth=False)
            mask = (out.alpha[..., 0] > cfg.eval.silhouette_alpha).cpu().numpy().astype(np.uint8) * 255
            rgb = (out.color.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            for sub_dir, arr in (("renders", mask), ("renders_rgb", rgb)):
                (Path(run_dir) / sub_dir / frame).mkdir(parents=True, exist_ok=True)
                _to_png(arr, Path(run_dir) / sub_dir / frame / f"{safe_stem(text)}.png")
            n += 1
    return n


def read_index(run_dir: Path) -> dict:
    p = Path(run_dir) / "queries" / "index.json"
    if not p.is_file():
        raise StageError(f"{p} not found: run the query step first")
    return json.loads(p.read_text())
