"""Stage-1 loss of COS3D: ProtoNCE on rendered instance-feature pixels + a norm regulariser.

docs/method.md §3.2 (the official ``train_instance.py`` loss, which is Unified-Lift's
``get_contrastive_loss`` with COS3D's φ scaling). Per training view:

* ``L_reg = norm_weight * mean_p (||F_p|| - 1)^2`` over **all** pixels of the raw rendered map.
* ``B = num_samples`` pixel indices drawn uniformly **with replacement**; every sample keeps
  ``v = F_p / (||F_p||.detach() + 1e-6)`` and its SAM id ``s``.
* Clusters = the ids whose sample count is ``> min_cluster_size``. The id ``-1`` (pixel covered by
  no SAM mask) is a cluster like any other (as in the release, docs/method.md §3.2). Samples of smaller clusters are dropped.
* ``u_i`` = mean of the cluster's ``v`` (not renormalised, gradient flows through it);
  ``φ_i = Σ_j ||v_j - u_i|| / (n_i ln(n_i + 10))`` then ``clip(phi_scale φ_i, phi_min, phi_max)``,
  detached (PCL / OmniSeg3D adaptive concentration).
* ``L_NCE = (1/C) Σ_{kept samples} -log( exp(v·u_own/φ_own) / (Σ_k exp(v·u_k/φ_k) + 1e-6) )``:
  a **sum** over samples, divided by the number of clusters C only (as in the release, docs/method.md §3.2).
* ``loss = loss_scale * (L_NCE + L_reg)``.

Numerics: with logits ``a_k = v·u_k/φ_k`` the per-sample term is
``log(Σ_k exp(a_k) + 1e-6) - a_own``, computed as ``logaddexp(logsumexp_k(a_k), log 1e-6) - a_own``.
This is the expression of docs/method.md §3.2 exactly (``log(x + ε) = logaddexp(log x, log ε)``), evaluated without
exponentiating large logits, so it never overflows for any ``phi_min > 0``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

_NORM_EPS = 1e-6     # v = F / (||F|| + 1e-6): Unified-Lift / COS3D pixel normalisation
_DENOM_EPS = 1e-6    # + 1e-6 inside the ProtoNCE softmax denominator (same source)


def _check_inputs(features: torch.Tensor, seg: torch.Tensor, sample_idx: Optional[torch.Tensor]):
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] == 0:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"protonce_loss: features must be a non-empty [P,D] tensor, got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"protonce_loss: features must be floating point, got {features.dtype}")
    if not isinstance(seg, torch.Tensor) or seg.numel() != features.shape[0]:
        shape = tuple(seg.shape) if isinstance(seg, torch.Tensor) else type(seg).__name__
        raise ValueError(f"protonce_loss: seg must hold one SAM id per pixel (P={features.shape[0]}), got {shape}")
    if seg.is_floating_point() or seg.dtype == torch.bool:
        raise ValueError(f"protonce_loss: seg must be an integer id map, got {seg.dtype}")
    if sample_idx is not None:
        if not isinstance(sample_idx, torch.Tensor) or sample_idx.ndim != 1 or sample_idx.is_floating_point():
            raise ValueError("protonce_loss: sample_idx must be a 1-D integer tensor of pixel indices")
        if sample_idx.numel() and (int(sample_idx.min()) < 0 or int(sample_idx.max()) >= features.shape[0]):
            raise ValueError(f"protonce_loss: sample_idx out of range [0, {features.shape[0]})")


def protonce_loss(
    features: torch.Tensor,                 # [P,D] raw rendered feature pixels (before normalisation)
    seg: torch.Tensor,                      # [P] (or any shape with P elements) int SAM ids, -1 = no mask
    num_samples: int = 32768,               # B, Unified-Lift / COS3D
    min_cluster_size: int = 20,             # a cluster needs > 20 samples (COS3D)
    phi_scale: float = 10.0,                # COS3D: φ <- clip(10 φ, 0.5, 1)
    phi_min: float = 0.5,
    phi_max: float = 1.0,
    norm_weight: float = 100.0,             # weight of the norm regulariser (COS3D)
    loss_scale: float = 1e-3,               # total scale (COS3D)
    generator: Optional[torch.Generator] = None,
    sample_idx: Optional[torch.Tensor] = None,  # [B] int64 pixel indices; overrides the random draw
) -> tuple[torch.Tensor, dict]:
    """COS3D's stage-1 loss for one rendered view (see the module docstring for the formula).

    ``features`` [P,D] float: rendered instance features, one row per pixel (P = H*W).
    ``seg`` [P] int64: level-"l" SAM id of each pixel, ``-1`` where no mask covers it.
    The B samples are ``torch.randint(0, P, (num_samples,), generator=generator)`` drawn on the
    generator's device (the features' device when ``generator`` is None), unless ``sample_idx``
    gives them explicitly (tests, deterministic debugging).

    Returns ``(loss, stats)``: ``loss`` a 0-dim tensor on the features' device (differentiable
    w.r.t. ``features``); ``stats = {"nce": float, "reg": float, "n_clusters": int}`` with the
    unscaled ``L_NCE`` and ``L_reg``. If no cluster survives, ``L_NCE = 0``.
    """
    _check_inputs(features, seg, sample_idx)
    device = features.device
    seg = seg.reshape(-1).to(device=device, dtype=torch.long)
    P = features.shape[0]

    # 1. norm regulariser on ALL raw pixels
    norms = features.norm(dim=1)                                   # [P]
    l_reg = norm_weight * ((norms - 1.0) ** 2).mean()

    # 2. pixel sampling, uniform with replacement
    if sample_idx is None:
        gen_device = generator.device if generator is not None else device
        sample_idx = torch.randint(0, P, (int(num_samples),), generator=generator, device=gen_device)
    idx = sample_idx.to(device=device, dtype=torch.long)         # [B]
    v = features[idx] / (norms[idx].detach()[:, None] + _NORM_EPS)  # [B,D], detached denominator
    labels = seg[idx]                                              # [B]

    # 3. clusters with > min_cluster_size samples; -1 is a label like any other
    uniq, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    keep_cluster = counts > min_cluster_size                       # [U]
    n_clusters = int(keep_cluster.sum())
    if n_clusters == 0:
        l_nce = features.new_zeros(())
    else:
        new_id = torch.cumsum(keep_cluster.long(), 0) - 1          # [U] compact id of kept clusters
        keep_sample = keep_cluster[inverse]                        # [B]
        v = v[keep_sample]                                         # [B',D]
        cid = new_id[inverse[keep_sample]]                         # [B'] cluster index in [0, C)
        n = counts[keep_cluster].to(v.dtype)                       # [C]

        # 4. prototypes (plain means, not renormalised) and adaptive concentrations φ
        u = torch.zeros(n_clusters, v.shape[1], dtype=v.dtype, device=device).index_add_(0, cid, v)
        u = u / n[:, None]                                         # [C,D]
        with torch.no_grad():
            dist = (v - u[cid]).norm(dim=1)                        # [B']
            phi = torch.zeros(n_clusters, dtype=v.dtype, device=device).index_add_(0, cid, dist)
            phi = phi / (n * torch.log(n + 10.0))
            phi = (phi_scale * phi).clamp(phi_min, phi_max)        # [C], detached

        # 5. ProtoNCE: sum over samples of log(Σ_k exp(a_k) + ε) - a_own, averaged over clusters
        logits = (v @ u.T) / phi[None, :]                          # [B',C]
        log_denom = torch.logaddexp(torch.logsumexp(logits, dim=1),
                                    logits.new_full((), math.log(_DENOM_EPS)))
        own = logits.gather(1, cid[:, None]).squeeze(1)            # [B']
        l_nce = (log_denom - own).sum() / n_clusters

    loss = loss_scale * (l_nce + l_reg)
    stats = {"nce": float(l_nce.detach()), "reg": float(l_reg.detach()), "n_clusters": n_clusters}
    return loss, stats
