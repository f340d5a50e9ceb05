"""Query-time grounding of COS3D: relevancy, rescale and the selection of Gaussians.

docs/method.md §5.1-5.4 (official ``Grounding_3D.py``):

* :func:`relevancy` — LERF / LangSplat relevancy of every Gaussian's language feature to each
  text query against the canonical negatives ``("object", "things", "stuff", "texture")``:
  ``R[q,i] = min_n exp(T l_i·t_q) / (exp(T l_i·t_q) + exp(T l_i·t_n))`` with ``T = 10``.
* :func:`rescale` — per query ``s = clip(2 (R - min R)/(max R - min R + 1e-9) - 1, 0, 1)``.
* :func:`refine_selection` — COS3D's adaptive language-to-instance prompt refinement
  (``greedy_feature_selection_with_score_filter``), written to be exact and fast at 1M Gaussians.
* :func:`select` — one switch for the three ablation variants of the paper (docs/method.md §5.4):

  ``"collaborative"``  the refinement above (the paper's method).
  ``"language_only"``  the language branch alone: ``s > language_threshold`` (0.5), i.e. the
                       rescaled relevancy thresholded directly (our reading: docs/deviations.md #20).
  ``"instance_only"``  the instance branch alone as the peers run it (OpenGaussian / Gaussian
                       Grouping style): the instance field clustered into objects once
                       (:func:`instance_clusters`), each cluster given the mean language feature
                       of its Gaussians, and the cluster most relevant to the query returned
                       (:func:`best_clusters`; ``stages/query.py`` calls them: they need the
                       language field, not ``s``).
  ``"instance_seed"``  the earlier definition: the seed is the Gaussian of highest ``s`` among
                       those with opacity ``> seed_opacity``; the result is the single instance
                       region ``{j : cos(f_seed, f_j) > 1 - instance_multiplier * d}`` (0.3, the
                       second of the four refinement thresholds), taken unconditionally. The
                       official code does not say what the paper's "instance branch only" row ran [U].

Data formats: scores/opacities are [N] float tensors, features [N,F] float, selections [N] bool;
everything stays on the device of the inputs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

CANONICAL_NEGATIVES = ("object", "things", "stuff", "texture")   # LERF / LangSplat / COS3D
MODES = ("collaborative", "language_only", "instance_only", "instance_seed")


def _need(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def relevancy(
    lang,                      # [N,C] per-Gaussian language features (unit length), or a field object
    pos: torch.Tensor,         # [Q,C] query text embeddings (unit length)
    neg: torch.Tensor,         # [Nn,C] canonical-negative embeddings (unit length)
    temperature: float = 10.0,  # LERF: softmax of 10 * cosine
    chunk_size: int = 262144,
    contrast: bool = False,     # each query's negatives also hold the other queries (query.contrast_queries)
) -> torch.Tensor:
    """LERF relevancy ``[Q,N]`` in (0,1), computed in chunks of ``chunk_size`` Gaussians.

    ``lang`` is a tensor or a language field of scene/language_field.py (anything with ``dots``: the
    factored kernel field answers the dot products through its structure, docs/method.md §4.5).
    The pairwise softmax ``exp(a)/(exp(a)+exp(b))`` is evaluated as ``sigmoid(a - b)`` and, as the
    sigmoid is increasing, the min over negatives as ``sigmoid(T (l·t_q - max_n l·t_n))``:
    identical values, no overflow for any temperature. Half-precision inputs are computed in float32.
    ``contrast``: query q's negatives are the canonical ones and every other query ``t_j, j != q``
    (docs/method.md §5.1.1; not in the paper): a Gaussian closer to another queried object than to q
    (a red apple's, for "green apple") loses its relevancy to q.
    """
    field = not isinstance(lang, torch.Tensor)
    _need(field and hasattr(lang, "dots") or not field and lang.ndim == 2,
          "relevancy: lang must be a 2-D tensor or a language field")
    for name, t in (("pos", pos), ("neg", neg)):
        _need(isinstance(t, torch.Tensor) and t.ndim == 2, f"relevancy: {name} must be a 2-D tensor")
    _need(pos.shape[1] == lang.shape[1] and neg.shape[1] == lang.shape[1],
          f"relevancy: feature dims differ: lang {tuple(lang.shape)}, pos {tuple(pos.shape)}, neg {tuple(neg.shape)}")
    _need(neg.shape[0] > 0, "relevancy: at least one negative phrase is needed")
    _need(chunk_size > 0, "relevancy: chunk_size must be positive")
    Q = pos.shape[0]
    if field:  # one pass through the structure for the queries and the negatives together
        sims = lang.dots(torch.cat([pos.float(), neg.float()]).to(lang.device))     # [N, Q + Nn]
        return _relevancy_of(sims[:, :Q], sims[:, Q:], temperature, contrast)
    dtype = torch.promote_types(lang.dtype, torch.float32)
    pos_t = pos.to(device=lang.device, dtype=dtype).T          # [C,Q]
    neg_t = neg.to(device=lang.device, dtype=dtype).T          # [C,Nn]
    N = lang.shape[0]
    out = torch.empty(Q, N, dtype=dtype, device=lang.device)  # [Q,N]
    for a in range(0, N, chunk_size):
        chunk = lang[a:a + chunk_size].to(dtype)              # [n,C]
        out[:, a:a + chunk_size] = _relevancy_of(chunk @ pos_t, chunk @ neg_t, temperature, contrast)
    return out


def _relevancy_of(sim_pos: torch.Tensor, sim_neg: torch.Tensor, temperature: float, contrast: bool) -> torch.Tensor:
    """[n,Q] cosines to the queries, [n,Nn] to the negatives -> relevancy [Q,n] (see ``relevancy``)."""
    hardest = sim_neg.amax(dim=1, keepdim=True)                 # [n,1] hardest negative
    Q = sim_pos.shape[1]
    if contrast and Q > 1:                                      # hardest other query, per query
        top = sim_pos.topk(2, dim=1)                                # [n,2] values / indices
        first = top.indices[:, :1] == torch.arange(Q, device=sim_pos.device)[None, :]        # [n,Q]
        other = torch.where(first, top.values[:, 1:2], top.values[:, :1])                     # [n,Q]
        hardest = torch.maximum(hardest, other)
    return torch.sigmoid(temperature * (sim_pos - hardest)).T


def rescale(r: torch.Tensor) -> torch.Tensor:
    """``r`` [N] (or [Q,N], rescaled per row) -> ``clip(2 (r - min)/(max - min + 1e-9) - 1, 0, 1)``.

    Everything below the mid-range becomes 0, the maximum becomes 1 (docs/method.md §5.2)."""
    _need(isinstance(r, torch.Tensor) and r.ndim >= 1 and r.shape[-1] > 0, "rescale: r must be a non-empty [N] tensor")
    lo = r.amin(dim=-1, keepdim=True)
    hi = r.amax(dim=-1, keepdim=True)
    return (2.0 * (r - lo) / (hi - lo + 1e-9) - 1.0).clamp(0.0, 1.0)


def _check_selection_inputs(name, score, feats, opacity, d):
    _need(isinstance(score, torch.Tensor) and score.ndim == 1, f"{name}: score must be a [N] tensor")
    N = score.shape[0]
    _need(isinstance(feats, torch.Tensor) and feats.ndim == 2 and feats.shape[0] == N,
          f"{name}: feats must be [N={N},F], got {tuple(getattr(feats, 'shape', ()))}")
    _need(isinstance(opacity, torch.Tensor) and opacity.reshape(-1).shape[0] == N,
          f"{name}: opacity must be [N={N}] (activated), got {tuple(getattr(opacity, 'shape', ()))}")
    d = float(d)
    _need(np.isfinite(d) and d >= 0.0, f"{name}: d (median intra-mask distance) must be finite and >= 0, got {d}")
    return d


def instance_region(feats: torch.Tensor, seed: int, threshold: float) -> torch.Tensor:
    """bool [N]: the instance region of Gaussian ``seed``, ``{j : f_seed·f_j > threshold}`` on unit
    features [N, D], the seed itself always included (its self-similarity taken as exactly 1)."""
    f = feats.to(torch.promote_types(feats.dtype, torch.float32))
    sim = f @ f[seed]
    sim[seed] = 1.0
    region = sim > threshold
    region[seed] = True
    return region


def refine_selection(
    score: torch.Tensor,       # [N] rescaled relevancy s in [0,1]
    feats: torch.Tensor,       # [N,F] L2-normalised instance features
    opacity: torch.Tensor,     # [N] activated opacity (sigmoid of the raw value)
    d: float,                  # median intra-mask feature distance (mapping/mean_distance)
    tau: float = 0.5,          # seed threshold AND region-acceptance threshold (COS3D score_thresh)
    seed_opacity: float = 0.1,  # seeds need opacity > 0.1 (COS3D)
    multipliers: Sequence[float] = (0.4, 0.3, 0.2, 0.1),  # T = 1 - m d, tried in this order (loosest first)
    regions: list | None = None,  # if a list: each accepted region is appended as (seed, multiplier, indices)
    positions: torch.Tensor | None = None,  # [N,3] centres: with link > 0, regions stay spatially connected
    link: float = 0.0,          # neighbour distance of that connectivity (0: off, the paper's rule)
    allowed: torch.Tensor | None = None,  # bool [N]: the Gaussians seeds and regions may use (None: all)
) -> torch.Tensor:
    """COS3D's greedy language-to-instance refinement (docs/method.md §5.3). Returns bool [N].

    Loop: the seed g is the unprocessed Gaussian with the highest ``s`` among ``s > tau`` and
    ``opacity > seed_opacity`` (ties: lowest index, as ``argmax``); ``sim = f·f_g``; for each
    ``t`` in ``T``: ``R = {sim > t} ∧ ¬processed``; if R is empty, mark g processed and stop; if
    the opacity-weighted mean of ``s`` over R is ``>= tau``, select R and stop. The last R tried
    (accepted, or the strictest if all were rejected) is marked processed.

    Implementation: the seed order is one stable descending sort done once, walked by a pointer
    that skips processed Gaussians (a host mirror of ``processed``; regions are disjoint, so the
    mirror costs O(N) transfers in total). Per seed: one [N] matvec, one [N] comparison with the
    loosest threshold, and the thresholds evaluated together on the (small) surviving subset, with
    one host sync for the decision. Cost is O(N) per seed tried, so the run time grows with the
    number of seeds (regions) tried, as in the official loop.
    With ``positions`` and ``link > 0`` (``query.connect_radius``, off by default) every candidate
    region is cut to the Gaussians connected to the seed through it, two of them neighbours when their
    centres are at most ``link`` apart (:func:`connected_part`), before its mean relevancy is taken:
    a region can no longer take in a distant, loosely constrained area whose features happen to be
    close (docs/method.md §5.3.1; not in the paper).
    With ``allowed`` (``query.mask_coverage_min``, off by default) seeds come only from the allowed
    Gaussians and every candidate region is cut to them before the connectivity and the mean relevancy
    are taken (docs/method.md §5.3.2; not in the paper).
    Two guards that only matter in degenerate input (``d == 0`` or a zero feature): the seed's
    self-similarity is taken as exactly 1, and the seed is always marked processed, so the loop
    always terminates.
    """
    d = _check_selection_inputs("refine_selection", score, feats, opacity, d)
    _need(len(multipliers) > 0, "refine_selection: at least one threshold multiplier is needed")
    device = score.device
    N = score.shape[0]
    selected = torch.zeros(N, dtype=torch.bool, device=device)
    if N == 0:
        return selected
    ftype = torch.promote_types(feats.dtype, torch.float32)
    f = feats.to(ftype)                                            # [N,F]
    s = score.to(ftype)                                            # [N]
    a = opacity.reshape(-1).to(device=device, dtype=ftype)         # [N]
    thresholds = torch.tensor([1.0 - m * d for m in multipliers], dtype=ftype, device=device)  # [K]
    t_loose = float(thresholds.min())

    ok = (s > tau) & (a > seed_opacity)
    if allowed is not None:
        _need(allowed.shape == (N,) and allowed.dtype == torch.bool,
              f"refine_selection: allowed must be a bool [N={N}] tensor, got {tuple(allowed.shape)} {allowed.dtype}")
        allowed = allowed.to(device)
        ok &= allowed
    eligible = torch.nonzero(ok).squeeze(1)                        # [E]
    if eligible.numel() == 0:
        return selected
    order = eligible[torch.sort(s[eligible], descending=True, stable=True).indices]
    order_np = order.cpu().numpy()                                 # seed order, descending score
    processed = torch.zeros(N, dtype=torch.bool, device=device)
    processed_np = np.zeros(N, dtype=bool)                         # host mirror for the pointer walk
    stats_w = torch.stack([torch.ones_like(a), a, a * s], dim=1)   # [N,3]: count, Σα, Σαs

    ptr, E = 0, order_np.shape[0]
    while True:
        while ptr < E and processed_np[order_np[ptr]]:             # advance past processed seeds
            ptr += 1
        if ptr >= E:
            break
        g = int(order_np[ptr])
        sim = f @ f[g]                                             # [N] cosine to the seed
        sim[g] = 1.0                                               # exact self-similarity
        cand = torch.nonzero(sim > t_loose).squeeze(1)             # [M'] loosest ball around g
        cand = cand[~processed[cand]]                              # [M] superset of every R
        if allowed is not None:
            cand = cand[allowed[cand]]
        member = sim[cand][None, :] > thresholds[:, None]          # [K,M] R_t for every threshold
        if positions is not None and link > 0:
            g_local, cand_pos = int(torch.nonzero(cand == g)[0, 0]), positions[cand]
            for k in range(member.shape[0]):
                member[k] &= connected_part(cand_pos, member[k], g_local, link)
        sums = (member.to(ftype) @ stats_w[cand]).tolist()        # [K][3] one host sync per seed
        chosen, accept = None, False
        for k, (count, w, ws) in enumerate(sums):
            if count == 0:                                         # empty R: only g is processed
                chosen = None
                break
            chosen = k
            if w > 0 and ws / w >= tau:                            # opacity-weighted mean relevancy
                accept = True
                break
        processed[g] = True
        processed_np[g] = True
        if chosen is not None:
            region = cand[member[chosen]]
            processed[region] = True
            processed_np[region.cpu().numpy()] = True
            if accept:
                selected[region] = True
                if regions is not None:                            # the hierarchy (stages/hierarchy.py)
                    regions.append((g, float(multipliers[chosen]), region))
    return selected


def connected_part(points: torch.Tensor, mask: torch.Tensor, seed: int, link: float) -> torch.Tensor:
    """bool [M]: the points of ``mask`` (bool [M]) connected to point ``seed`` through points of
    ``mask``, two points linked when at most ``link`` apart (scipy cKDTree pairs + connected components).
    ``seed`` outside ``mask``: nothing."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    out = torch.zeros_like(mask)
    if not bool(mask[seed]):
        return out
    idx = torch.nonzero(mask).squeeze(1)
    pts = points[idx].detach().double().cpu().numpy()
    pairs = cKDTree(pts).query_pairs(float(link), output_type="ndarray")
    n = len(pts)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    local = int(torch.nonzero(idx == seed)[0, 0])
    keep = torch.from_numpy(comp == comp[local]).to(mask.device)
    out[idx[keep]] = True
    return out


def median_neighbour_distance(points: torch.Tensor) -> float:
    """The median distance of a point to its nearest other point (the scale of ``query.connect_radius``)."""
    from scipy.spatial import cKDTree

    pts = points.detach().double().cpu().numpy()
    if len(pts) < 2:
        return 0.0
    dist, _ = cKDTree(pts).query(pts, k=2)
    return float(np.median(dist[:, 1]))


def select(
    mode: str,
    score: torch.Tensor,       # [N] rescaled relevancy
    feats: torch.Tensor,       # [N,F] L2-normalised instance features
    opacity: torch.Tensor,     # [N] activated opacity
    d: float,                  # median intra-mask feature distance
    tau: float = 0.5,
    seed_opacity: float = 0.1,
    multipliers: Sequence[float] = (0.4, 0.3, 0.2, 0.1),
    language_threshold: float = 0.5,
    instance_multiplier: float = 0.3,
    positions: torch.Tensor | None = None,
    link: float = 0.0,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Selection of Gaussians for one query, bool [N]; ``mode`` in :data:`MODES` (module docstring).
    ``positions`` / ``link`` / ``allowed``: the collaborative rule's spatial connectivity and the
    Gaussians it may use (:func:`refine_selection`)."""
    if mode == "collaborative":
        return refine_selection(score, feats, opacity, d, tau, seed_opacity, multipliers,
                                positions=positions, link=link, allowed=allowed)
    d = _check_selection_inputs("select", score, feats, opacity, d)
    if mode == "language_only":
        return score > language_threshold
    if mode == "instance_only":
        raise ValueError("select: instance_only answers from clusters and the language field: use "
                         "instance_clusters + best_clusters (stages/query.py select_from_vectors)")
    if mode == "instance_seed":
        a = opacity.reshape(-1).to(score.device)
        ok = a > seed_opacity
        if not bool(ok.any()):
            return torch.zeros_like(score, dtype=torch.bool)
        masked = torch.where(ok, score.float(), torch.full_like(score, -float("inf"), dtype=torch.float32))
        g = int(torch.argmax(masked))
        return instance_region(feats, g, 1.0 - instance_multiplier * d)  # the seed's own instance
    raise ValueError(f"select: unknown mode {mode!r}; expected one of {MODES}")


def instance_clusters(feats: torch.Tensor, opacity: torch.Tensor, d: float, multiplier: float = 0.3,
                      seed_opacity: float = 0.1) -> torch.Tensor:
    """long [N]: the instance field's objects, -1 = in none. Leader clustering (docs/method.md §5.4):
    leaders are taken by decreasing opacity among the unassigned Gaussians with opacity
    ``> seed_opacity``; a leader's cluster is every unassigned Gaussian j (any opacity) with
    ``f_leader·f_j > 1 - multiplier · d``, the refinement's threshold at ``multiplier``. Deterministic
    (stable sort; ties: lower index first); one [N] matvec per cluster."""
    d = float(d)
    N = feats.shape[0]
    device = feats.device
    labels = torch.full((N,), -1, dtype=torch.long, device=device)
    if N == 0:
        return labels
    a = opacity.reshape(-1).to(device=device, dtype=torch.promote_types(feats.dtype, torch.float32))
    lead = torch.nonzero(a > seed_opacity).squeeze(1)
    order = lead[torch.sort(a[lead], descending=True, stable=True).indices].cpu().numpy()
    assigned = np.zeros(N, dtype=bool)
    threshold = 1.0 - float(multiplier) * d
    k = 0
    for g in order:
        if assigned[g]:
            continue
        members = instance_region(feats, int(g), threshold) & (labels < 0)
        labels[members] = k
        assigned[members.cpu().numpy()] = True
        k += 1
    return labels


def cluster_features(labels: torch.Tensor, lang, chunk_size: int = 65536) -> torch.Tensor:
    """[K, C]: each cluster's mean language feature (of its Gaussians' rows of ``lang``, a tensor or a
    language field), unit length; summed ``chunk_size`` Gaussians at a time."""
    K = int(labels.max()) + 1 if labels.numel() and int(labels.max()) >= 0 else 0
    device = labels.device
    sums = torch.zeros((K, lang.shape[1]), dtype=torch.float32, device=device)
    for a in range(0, labels.shape[0], chunk_size):
        lab = labels[a:a + chunk_size]
        ok = torch.nonzero(lab >= 0).squeeze(1)
        rows = lang[a + ok] if isinstance(lang, torch.Tensor) else lang.rows(a + ok)
        sums.index_add_(0, lab[ok], rows.float().to(device))
    return torch.nn.functional.normalize(sums, dim=-1)


def best_clusters(labels: torch.Tensor, lang, pos: torch.Tensor, neg: torch.Tensor,
                  temperature: float = 10.0, min_size: int = 1) -> list[torch.Tensor]:
    """Per query of ``pos`` [Q, C]: bool [N], the Gaussians of the cluster of at least ``min_size``
    Gaussians whose mean language feature has the highest relevancy to it (against the negatives
    ``neg``); nothing when there is no such cluster. Without the size floor the winner is nearly always
    a cluster of one or two loosely constrained Gaussians whose single vector happens to point at the
    query (docs/method.md §5.4)."""
    cf = cluster_features(labels, lang)
    sizes = torch.bincount(labels[labels >= 0], minlength=cf.shape[0])
    ok = sizes >= max(int(min_size), 1)
    if not bool(ok.any()):
        return [torch.zeros_like(labels, dtype=torch.bool) for _ in range(pos.shape[0])]
    rel = relevancy(cf, pos.to(cf.device), neg.to(cf.device), temperature=temperature)   # [Q, K]
    rel = torch.where(ok[None, :].to(rel.device), rel, torch.full_like(rel, -1.0))
    return [labels == int(k) for k in rel.argmax(dim=1).tolist()]
