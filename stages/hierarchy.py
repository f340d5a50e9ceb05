"""Hierarchical segmentation: one text query -> nested selections at part / object / group granularity.

docs/method.md §5.8. The object level is the query's ordinary selection (``query.mode``). Its accepted
instance regions R_r (seed g_r, accepted multiplier m_r; §5.3) are re-thresholded with a granularity
scale s: ``B_r(s) = {j : f_{g_r}·f_j > 1 - s·m_r·d} ∪ {g_r}``.

* s < 1 (``part``, ``query.part_scale``):  ``∪_r (B_r(s) ∩ R_r)``          — inside each region;
* s = 1 (``object``):                      ``∪_r R_r``, the plain query's selection, exactly;
* s > 1 (``group``, ``query.group_scale``): ``object ∪ ∪_r B_r(s)``        — grown around the seeds.

B_r(s) grows with s, so the levels nest by construction for any scales s1 < s2 (selection(s1) ⊆
selection(s2)), with no intersection after the fact. ``language_only`` has no instance regions and
is refused. ``query.py --granularity G`` -> ``queries/<query>@G.npy``; ``query.py --hierarchy`` ->
the three levels + ``queries/<query>_hierarchy.json`` (the tree of levels and per-seed regions).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from arguments import Config
from scene.atomic import write_json
from scene.grounding import instance_region, refine_selection, relevancy, rescale
from scene.names import safe_stem
from scene.selections import queries_dir, record_selections

from .query import QueryModel, allowed_of, build_encoder, link_of, load_query_model

GRANULARITIES = ("part", "object", "group")   # finest first


def granularity_scale(cfg: Config, granularity) -> tuple[str, float]:
    """(label, scale s) of ``part`` / ``object`` / ``group`` or of a positive number (the scale itself)."""
    q = cfg.query
    if not 0.0 < q.part_scale <= 1.0 or q.group_scale < 1.0:
        raise ValueError(f"query.part_scale must be in (0, 1] and query.group_scale >= 1 (the levels nest in that "
                         f"order), got {q.part_scale:g} and {q.group_scale:g}")
    named = {"part": q.part_scale, "object": 1.0, "group": q.group_scale}
    if isinstance(granularity, str) and granularity in named:
        return granularity, float(named[granularity])
    try:
        s = float(granularity)
    except (TypeError, ValueError):
        raise ValueError(f"unknown granularity {granularity!r}: expected part, object, group or a positive "
                         f"number (the scale of the region thresholds, 1 = object)") from None
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"granularity {granularity!r} must be a positive number (a scale of the region "
                         f"thresholds, 1 = object) or part, object, group")
    return f"{s:g}", s


def object_regions(cfg: Config, qm: QueryModel, s: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The ``query.mode`` selection bool [N] of rescaled relevancy ``s`` and its accepted regions
    ``[(seed, multiplier, indices)]`` (the same selection as ``stages.query.select_from_vectors``)."""
    q = cfg.query
    if q.mode == "collaborative":
        regions = []
        link = link_of(cfg, qm)
        sel = refine_selection(s, qm.feats, qm.opacity, qm.d, tau=q.score_thresh, seed_opacity=q.seed_opacity,
                               multipliers=tuple(q.multipliers), regions=regions,
                               positions=qm.params["means"] if link else None, link=link,
                               allowed=allowed_of(cfg, qm))
        return sel, regions
    if q.mode == "instance_seed":
        from scene.grounding import select
        sel = select("instance_seed", s, qm.feats, qm.opacity, qm.d, seed_opacity=q.seed_opacity,
                     instance_multiplier=q.instance_multiplier)
        ok = qm.opacity.reshape(-1).to(s.device) > q.seed_opacity
        if not bool(ok.any()):
            return sel, []
        g = int(torch.argmax(torch.where(ok, s.float(), torch.full_like(s, -float("inf"), dtype=torch.float32))))
        return sel, [(g, float(q.instance_multiplier), torch.nonzero(sel).squeeze(1))]
    raise ValueError(f"granularity / hierarchy need instance regions: query.mode {q.mode!r} has none "
                     f"(use collaborative or instance_seed)")


def level_selection(feats: torch.Tensor, d: float, object_sel: torch.Tensor, regions: list,
                    scale: float) -> tuple[torch.Tensor, list]:
    """The selection bool [N] at threshold scale ``scale`` (module docstring) and its per-region parts."""
    if scale == 1.0:
        return object_sel.clone(), [torch.isin(torch.arange(object_sel.shape[0], device=object_sel.device), idx)
                                    for _, _, idx in regions]
    sel = object_sel.clone() if scale > 1.0 else torch.zeros_like(object_sel)
    parts = []
    for g, m, idx in regions:
        ball = instance_region(feats, g, 1.0 - scale * m * d)
        if scale < 1.0:
            inside = torch.zeros_like(ball)
            inside[idx] = True
            ball &= inside                       # B_r(s) ∩ R_r
        else:
            ball[idx] = True                     # R_r ⊆ B_r(s) for s > 1 anyway; explicit
        parts.append(ball)
        sel |= ball
    return sel, parts


def _scores(cfg: Config, qm: QueryModel, run_dir: Path, queries: list[str], device):
    enc, enc_info = build_encoder(cfg, run_dir)
    pos = enc.encode(list(queries)).to(device)
    neg = enc.encode(list(cfg.query.negatives)).to(device)
    rel = relevancy(qm.lang, pos, neg, temperature=cfg.query.temperature)   # [Q, N]
    return rel, enc_info


def _record(cfg, text, label, scale, enc_info, seconds):
    return {"mode": cfg.query.mode, "prompt": {"text": text, "granularity": label}, "scale": scale,
            "text_encoder": enc_info, "seconds": round(seconds, 4)}


def run_granularity(cfg: Config, run_dir: Path, queries: list[str], granularity, device) -> dict:
    """``query.py --granularity G``: each query's selection at G -> ``queries/<query>@<G>.npy`` + records."""
    label, scale = granularity_scale(cfg, granularity)
    for text in queries:
        safe_stem(text)
    qm = load_query_model(cfg, run_dir, device)
    rel, enc_info = _scores(cfg, qm, run_dir, queries, device)
    entries = {}
    for text, r in zip(queries, rel):
        t0 = time.time()
        obj, regions = object_regions(cfg, qm, rescale(r))
        sel, _ = level_selection(qm.feats, qm.d, obj, regions, scale)
        entries[f"{text}@{label}"] = (sel.cpu().numpy(), _record(cfg, text, label, scale, enc_info, time.time() - t0))
    return record_selections(run_dir, qm.model, qm.d, entries)


def _mean(x: torch.Tensor, mask: torch.Tensor):
    return round(float(x[mask].mean()), 6) if bool(mask.any()) else None


def run_hierarchy(cfg: Config, run_dir: Path, text: str, device) -> tuple[Path, dict]:
    """``query.py --hierarchy``: the part / object / group selections of ``text`` (records
    ``<text>@part`` etc.) and ``queries/<text>_hierarchy.json``: the tree. Nodes: the three levels
    (group the root, each finer level the child of the coarser one, with its selection file) and, per
    accepted seed, its region at each level (group region under the group level, the seed's finer
    regions under its coarser ones). Every node is a subset of its parent."""
    safe_stem(text)
    labels = [granularity_scale(cfg, g) for g in GRANULARITIES]
    qm = load_query_model(cfg, run_dir, device)
    rel, enc_info = _scores(cfg, qm, run_dir, [text], device)
    t0 = time.time()
    s = rescale(rel[0])
    obj, regions = object_regions(cfg, qm, s)
    levels = {label: level_selection(qm.feats, qm.d, obj, regions, scale) for label, scale in labels}
    seconds = time.time() - t0
    entries = {f"{text}@{label}": (levels[label][0].cpu().numpy(), _record(cfg, text, label, scale, enc_info, seconds))
               for label, scale in labels}
    recs = record_selections(run_dir, qm.model, qm.d, entries)
    nodes, level_id, region_id = [], {}, {}
    for label, scale in reversed(labels):                  # group first: parents before children
        sel = levels[label][0]
        level_id[label] = len(nodes)
        parent = level_id.get(GRANULARITIES[GRANULARITIES.index(label) + 1]) if label != "group" else None
        nodes.append({"id": len(nodes), "kind": "level", "granularity": label, "scale": scale, "parent": parent,
                      "n_gaussians": int(sel.sum()), "mean_relevancy": _mean(s, sel), "mean_raw_relevancy":
                      _mean(rel[0], sel), "file": recs[f"{text}@{label}"]["file"]})
    for label, scale in reversed(labels):
        for r, ((g, m, _), mask) in enumerate(zip(regions, levels[label][1])):
            coarser = GRANULARITIES[GRANULARITIES.index(label) + 1] if label != "group" else None
            parent = region_id[coarser, r] if coarser else level_id["group"]
            region_id[label, r] = len(nodes)
            nodes.append({"id": len(nodes), "kind": "region", "granularity": label, "scale": scale, "seed": int(g),
                          "threshold": round(1.0 - scale * m * qm.d, 6), "parent": parent,
                          "n_gaussians": int(mask.sum()), "mean_relevancy": _mean(s, mask),
                          "mean_raw_relevancy": _mean(rel[0], mask), "file": None})
    out = {"query": text, "mode": cfg.query.mode, "median_distance": qm.d, "n_gaussians": int(obj.shape[0]),
           "text_encoder": enc_info, "nodes": nodes}
    path = queries_dir(run_dir) / f"{safe_stem(text)}_hierarchy.json"
    write_json(path, out)
    return path, out
