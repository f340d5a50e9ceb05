"""Inference: text queries -> per-Gaussian selections.

* ``run_queries``: relevancy of every Gaussian's language feature to each query (canonical
  negatives), per-query rescale, then the selection of ``query.mode`` (COS3D's collaborative
  refinement by default) -> ``<run>/queries/<query>.npy`` (bool [N]) + ``queries/index.json``.
The selection records (``queries/<query>.npy`` + ``queries/index.json``) are read and written here
(``query_file``, ``read_index``); ``stages/rendering.py`` renders them.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from arguments import Config
from scene.errors import StageError
from scene.grounding import best_clusters, instance_clusters, median_neighbour_distance, relevancy, rescale, select
from scene.names import safe_stem
from scene.provenance import TextEncoderMismatchError, build_resolved_encoder, resolve_text_encoder
from scene.selections import record_selections

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
                                        q.text_table, model=q.text_model)
        cache = (Path(run_dir) / "queries" / "text_cache.pt"
                 if run_dir is not None and resolved["encoder"] == "openclip" else None)
        return build_resolved_encoder(resolved, cache_path=cache)
    except TextEncoderMismatchError as e:
        raise StageError(str(e)) from None


@dataclass
class QueryModel:
    """What every prompt is answered from: the instance model, its language field and derived values."""
    params: dict             # the instance model (instance/point_cloud.ply), on the query device
    lang: object             # the language field [N, C]: a KernelField or DenseField (scene/language_field.py)
    d: float                 # median instance-feature distance of the mapping pairs
    feats: torch.Tensor      # [N, D] unit instance features
    opacity: torch.Tensor    # [N] activated opacities
    model: dict              # content hashes the selections depend on (index.json "model")
    cache: dict = field(default_factory=dict)   # derived once: (multiplier, seed_opacity) -> cluster labels [N],
                                                # "nn" -> median nearest-neighbour distance, "coverage" -> [N]
    run_dir: Path | None = None  # where the model came from (the mask-coverage cache lives there)


def link_of(cfg: Config, qm: QueryModel) -> float:
    """``query.connect_radius`` x the model's median nearest-neighbour distance (0: off), computed once."""
    r = float(cfg.query.connect_radius)
    if r <= 0:
        return 0.0
    if "nn" not in qm.cache:
        qm.cache["nn"] = median_neighbour_distance(qm.params["means"])
    return r * qm.cache["nn"]


def allowed_of(cfg: Config, qm: QueryModel) -> torch.Tensor | None:
    """``query.mask_coverage_min`` > 0: bool [N], the Gaussians whose mask coverage reaches it
    (stages/coverage.py, computed once per query model); 0: None (every Gaussian, the paper's rule)."""
    c = float(cfg.query.mask_coverage_min)
    if c <= 0:
        return None
    if c > 1:
        raise StageError(f"query.mask_coverage_min is a fraction in [0, 1], got {c}")
    if "coverage" not in qm.cache:
        from .coverage import mask_coverage

        if qm.run_dir is None:
            raise StageError("query.mask_coverage_min needs the run directory of the query model")
        qm.cache["coverage"] = mask_coverage(cfg, qm.run_dir, qm.params, qm.model.get("instance/point_cloud.ply", ""))
    return qm.cache["coverage"].to(qm.feats.device) >= c


def clusters_of(cfg: Config, qm: QueryModel) -> torch.Tensor:
    """The instance field's clusters for ``query.mode: instance_only`` (scene.grounding.instance_clusters),
    computed once per query model and setting."""
    q = cfg.query
    key = (float(q.instance_multiplier), float(q.seed_opacity))
    if key not in qm.cache:
        qm.cache[key] = instance_clusters(qm.feats, qm.opacity, qm.d, *key)
    return qm.cache[key]


def load_query_model(cfg: Config, run_dir: Path, device) -> QueryModel:
    params = load_instance_model(run_dir, device)
    lang, d = load_language_field(cfg, run_dir, params)
    return QueryModel(params, lang, d, F.normalize(params["ins_feat"], dim=-1), torch.sigmoid(params["opacities"]),
                      model_id(run_dir), run_dir=Path(run_dir))


def select_from_vectors(cfg: Config, qm: QueryModel, pos: torch.Tensor, neg: torch.Tensor,
                        return_scores: bool = False) -> list[tuple]:
    """Prompt embeddings [Q, C] (text or image) -> [(bool [N] selection, seconds)] with ``query.mode``:
    relevancy against the negatives [K, C], rescale, then the mode's selection. ``return_scores``: each
    tuple also holds the rescaled relevancy [N] the selection was made from (the viewer's heat map)."""
    q = cfg.query
    t_all = time.time()
    rel = relevancy(qm.lang, pos, neg, temperature=q.temperature, contrast=q.contrast_queries)  # [Q, N]
    clustered = (best_clusters(clusters_of(cfg, qm), qm.lang, pos, neg, temperature=q.temperature,
                               min_size=math.ceil(q.cluster_min_frac * qm.feats.shape[0]))
                 if q.mode == "instance_only" else None)
    link = link_of(cfg, qm)
    allowed = allowed_of(cfg, qm) if q.mode == "collaborative" else None
    t_rel = (time.time() - t_all) / max(pos.shape[0], 1)
    out = []
    for i in range(pos.shape[0]):
        t0 = time.time()
        s = rescale(rel[i])
        sel = clustered[i] if clustered is not None else select(
            q.mode, s, qm.feats, qm.opacity, qm.d, tau=q.score_thresh, seed_opacity=q.seed_opacity,
            multipliers=tuple(q.multipliers), language_threshold=q.language_threshold,
            instance_multiplier=q.instance_multiplier, positions=qm.params["means"] if link else None, link=link,
            allowed=allowed)
        seconds = round(time.time() - t0 + t_rel, 4)
        out.append((sel, seconds, s) if return_scores else (sel, seconds))
    return out


def select_texts(cfg: Config, qm: QueryModel, enc, texts: list[str], return_scores: bool = False) -> list[tuple]:
    """Text queries -> ``select_from_vectors`` of their embeddings by ``enc`` against ``query.negatives``:
    what ``query.py`` and the viewer answer a text with."""
    for text in texts:
        safe_stem(text)  # refuses an empty query before any work
    device = qm.feats.device
    pos = enc.encode(list(texts)).to(device)
    neg = enc.encode(list(cfg.query.negatives)).to(device)
    return select_from_vectors(cfg, qm, pos, neg, return_scores)


def run_queries(cfg: Config, run_dir: Path, queries: list[str], device) -> dict:
    """Text queries -> ``queries/<query>.npy`` + their ``index.json`` records (returned by query)."""
    for text in queries:
        safe_stem(text)  # refuses an empty query before any work
    qm = load_query_model(cfg, run_dir, device)
    enc, enc_info = build_encoder(cfg, run_dir)
    results = select_texts(cfg, qm, enc, queries)
    entries = {text: (sel.cpu().numpy(), {"mode": cfg.query.mode, "prompt": {"text": text}, "text_encoder": enc_info,
                                          "seconds": sec})
               for text, (sel, sec) in zip(queries, results)}
    return record_selections(run_dir, qm.model, qm.d, entries)
