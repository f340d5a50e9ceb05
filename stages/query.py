"""Inference: text queries -> per-Gaussian selections.

* ``run_queries``: relevancy of every Gaussian's language feature to each query (canonical
  negatives), per-query rescale, then the selection of ``query.mode`` (COS3D's collaborative
  refinement by default) -> ``<run>/queries/<query>.npy`` (bool [N]) + ``queries/index.json``.
The selection records (``queries/<query>.npy`` + ``queries/index.json``) are read and written here
(``query_file``, ``read_index``); ``stages/rendering.py`` renders them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from arguments import Config
from scene.errors import StageError
from scene.grounding import relevancy, rescale, select
from scene.names import safe_stem
from scene.provenance import TextEncoderMismatchError, build_resolved_encoder, resolve_text_encoder
from scene.selections import queries_dir, read_index, save_selection, write_index

from .mapping import load_instance_model, load_language_field


def label_root_of(cfg: Config) -> Path:
    """OpenGaussian's layout: ``label/`` sits beside the scene folders."""
    if cfg.eval.label_root:
        return Path(cfg.eval.label_root)
    return Path(cfg.data.source_path).resolve().parent / "label"


def scene_name(cfg: Config) -> str:
    return Path(cfg.data.source_path).resolve().name


def default_queries(cfg: Config) -> list[str]:
    """The categories of the scene's labelled frames (what LERF-OVS evaluates)."""
    from scene.lerf_labels import ensure_gt, read_gt

    if cfg.query.queries:
        return list(cfg.query.queries)
    gt = read_gt(ensure_gt(label_root_of(cfg), scene_name(cfg)))
    cats = sorted({c for frame in gt.values() for c in frame})
    if not cats:
        raise StageError(f"{label_root_of(cfg) / scene_name(cfg)}: no labelled categories; pass queries with "
                         f"--set query.queries='[\"red apple\"]'")
    return cats


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
    old = read_index(run_dir, missing_ok=True)
    model = model_id(run_dir)
    index = old.get("queries", {}) if old.get("model") == model else {}  # earlier queries of this model
    if old.get("queries") and not index:
        print(f"[query] the model changed since {queries_dir(run_dir) / 'index.json'} was written: "
              f"earlier queries are dropped")
    t_all = time.time()
    rel = relevancy(lang, pos, neg, temperature=q.temperature)  # [Q, N]
    t_rel = (time.time() - t_all) / max(len(queries), 1)
    for i, text in enumerate(queries):
        t0 = time.time()
        s = rescale(rel[i])
        sel = select(q.mode, s, feats, opacity, d, tau=q.score_thresh, seed_opacity=q.seed_opacity,
                     multipliers=tuple(q.multipliers), language_threshold=q.language_threshold,
                     instance_multiplier=q.instance_multiplier)
        path = save_selection(run_dir, text, sel.cpu().numpy())
        index[text] = {"file": path.name, "n_selected": int(sel.sum()), "mode": q.mode,
                       "text_encoder": enc_info, "seconds": round(time.time() - t0 + t_rel, 4)}
    write_index(run_dir, model, d, index)
    return {t: index[t] for t in queries}
