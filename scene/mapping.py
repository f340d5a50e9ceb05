"""COS3D stage 2: instance -> language mapping ("Ins2Lang"), docs/method.md §4.

Pure tensor code with plain arguments; the stage wiring (config, renderer, files) lives elsewhere.
Every function runs on the device of its inputs; chunk sizes are arguments.

* ``PairCollector`` (docs/method.md §4.1): streams rendered per-view instance-feature maps and level-3 SAM id maps into
  mask-level pairs (anchor feature = mean of the per-pixel normalised features, NOT renormalised;
  anchor CLIP = that mask's ``_f.npy`` row, L2-normalised) and the median pixel-to-anchor distance
  (``mean_distance.pt`` of the release is this median, docs/deviations.md #6).
* ``kernel_mapping`` (docs/method.md §4.2, default, training-free): Nadaraya-Watson regression over the top-25 anchors
  by cosine distance, Gaussian kernel sigma = 0.1, computed as a per-row softmax (the release divides
  by a chunk-global sum, which underflows to 0/0 when every distance is large, docs/deviations.md #1).
* ``smooth_knn`` (docs/method.md §4.3): mean over the 10 nearest Gaussians in xyz, read from an unmodified
  copy (the release smooths in place, chunk-order dependent, docs/deviations.md #2), renormalised.
* ``MLPMapping`` / ``fit_mlp`` / ``mlp_mapping`` (docs/method.md §4.4, optional): the LangSplat-style decoder.
* ``inputs_hash``: tags a cached language field with the exact inputs it came from (docs/deviations.md #3).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_NORM_EPS = 1e-6   # per-pixel feature normalisation, construct_collobrative_kernel.py (docs/method.md §4.1)
CLIP_NORM_EPS = 1e-6    # anchor CLIP normalisation, same file (docs/method.md §4.1)
MLP_NORM_EPS = 1e-8     # feature normalisation of the MLP variant, autoencoder/ (docs/method.md §4.4)
MEDIAN_BINS = 1 << 20   # histogram bins on [0, 2]: bin width 2 / 2^20 ~ 1.9e-6
MEDIAN_RANGE = 2.0      # ||v - a|| <= ||v|| + ||a|| <= 2 for unit v and a mean of unit vectors


def _unit_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D] -> x / (||x|| + eps) along the last axis (the release's normalisation form)."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


# ----------------------------------------------------------------------------------------------
# docs/method.md §4.1 mask-level pairs
# ----------------------------------------------------------------------------------------------
class PairCollector:
    """Accumulates mask-level (instance feature, CLIP) pairs view by view (docs/method.md §4.1).

    Streaming: per view only its pairs (one row per mask) are kept, and the per-pixel distances go
    into a fixed histogram, so 250 views x 1M pixels never sit in memory at once.

    The median of all recorded distances is read from a histogram of ``bins`` equal bins on [0, 2]
    (every distance is <= 2, see ``MEDIAN_RANGE``). Each of the (one or two) middle order statistics
    is located in its bin and linearly interpolated inside it, so it lies in the same bin as the
    exact value: the error is below one bin width (2/2^20 ~ 1.9e-6 by default) whatever the data.
    The histogram is an int64 tensor [bins] (8 MiB by default) on the device of the first view.
    """

    def __init__(self, bins: int = MEDIAN_BINS):
        if bins < 1:
            raise ValueError(f"PairCollector: bins must be >= 1, got {bins}")
        self.bins = int(bins)
        self._hist: Optional[torch.Tensor] = None   # [bins] int64
        self._feature: list = []   # per view [m_v, D]
        self._clip: list = []      # per view [m_v, C]
        self._view: list = []      # per view [m_v] int64
        self._mask: list = []      # per view [m_v] int64
        self._count: list = []     # per view [m_v] int64 pixels per mask
        self._n_views = 0
        self._dims: Optional[tuple] = None  # (D, C)

    def add_view(self, feat_map: torch.Tensor, seg: torch.Tensor, clip_table: torch.Tensor,
                 view_index: Optional[int] = None) -> int:
        """Adds one view; returns the number of pairs it produced.

        feat_map [H,W,D] rendered instance features (raw; each pixel is normalised here, eps 1e-6)
        seg [H,W] integer level-3 SAM ids (-1 = no mask), row indices into ``clip_table``
        clip_table [R,C] that view's ``_f.npy`` rows (any norm; normalised here, eps 1e-6)
        view_index: recorded with the pairs; default = number of views added before this one.
        """
        if feat_map.dim() != 3:
            raise ValueError(f"PairCollector.add_view: feat_map must be [H,W,D], got {tuple(feat_map.shape)}")
        if seg.shape != feat_map.shape[:2]:
            raise ValueError(f"PairCollector.add_view: seg {tuple(seg.shape)} does not match the feature "
                             f"map's H,W {tuple(feat_map.shape[:2])} (render at the seg-map resolution)")
        if clip_table.dim() != 2:
            raise ValueError(f"PairCollector.add_view: clip_table must be [R,C], got {tuple(clip_table.shape)}")
        if seg.dtype.is_floating_point or seg.dtype == torch.bool:
            raise ValueError(f"PairCollector.add_view: seg must be an integer id map, got {seg.dtype}")
        dims = (feat_map.shape[-1], clip_table.shape[-1])
        if self._dims is not None and dims != self._dims:
            raise ValueError(f"PairCollector.add_view: feature/CLIP dims {dims} differ from earlier views {self._dims}")
        self._dims = dims
        if view_index is None:
            view_index = self._n_views
        self._n_views += 1
        device = feat_map.device
        if self._hist is None:
            self._hist = torch.zeros(self.bins, dtype=torch.int64, device=device)

        D = feat_map.shape[-1]
        seg = seg.to(device=device, dtype=torch.int64).reshape(-1)   # [HW]
        valid = seg >= 0
        ids = seg[valid]                                              # [P]
        if ids.numel() == 0:
            return 0
        R = clip_table.shape[0]
        top = int(ids.max())
        if top >= R:
            raise ValueError(f"PairCollector.add_view: view {view_index} has mask id {top} but its "
                             f"_f table has only {R} rows (seg map and _f.npy do not belong together)")
        v = _unit_rows(feat_map.detach().reshape(-1, D)[valid].float(), PIXEL_NORM_EPS)   # [P,D]
        uniq, inv = torch.unique(ids, return_inverse=True)                        # [m], [P]
        m = uniq.numel()
        counts = torch.bincount(inv, minlength=m)                                 # [m]
        sums = torch.zeros(m, D, dtype=v.dtype, device=device).index_add_(0, inv, v)
        anchors = sums / counts.unsqueeze(1).to(v.dtype)                          # [m,D] not renormalised
        dist = (v - anchors[inv]).norm(dim=-1)                                    # [P]
        self._hist += self._bin_counts(dist)

        clip = _unit_rows(clip_table.detach().to(device)[uniq].float(), CLIP_NORM_EPS)    # [m,C]
        self._feature.append(anchors)
        self._clip.append(clip)
        self._view.append(torch.full((m,), int(view_index), dtype=torch.int64, device=device))
        self._mask.append(uniq)
        self._count.append(counts)
        return m

    def _bin_counts(self, dist: torch.Tensor) -> torch.Tensor:
        """dist [P] in [0, 2] -> per-bin counts [bins] on the histogram's device."""
        d = dist.to(self._hist.device, torch.float64)
        idx = (d * (self.bins / MEDIAN_RANGE)).floor().clamp_(0, self.bins - 1).long()
        return torch.bincount(idx, minlength=self.bins)

    @property
    def num_pairs(self) -> int:
        return sum(int(x.numel()) for x in self._view)

    def median_distance(self) -> float:
        """Median of every recorded pixel-to-anchor distance (np.median convention: mean of the two
        middle values for an even count), from the histogram; error < one bin width."""
        if self._hist is None or int(self._hist.sum()) == 0:
            raise ValueError("PairCollector: no mask pixel was recorded (every seg map was -1?)")
        hist = self._hist.cpu().numpy()
        cum = np.cumsum(hist)
        n = int(cum[-1])
        width = MEDIAN_RANGE / self.bins

        def order_stat(k: int) -> float:   # k-th smallest, 0-based
            b = int(np.searchsorted(cum, k, side="right"))
            before = int(cum[b - 1]) if b > 0 else 0
            return (b + (k - before + 0.5) / int(hist[b])) * width

        return 0.5 * (order_stat((n - 1) // 2) + order_stat(n // 2))

    def result(self) -> dict:
        """-> dict(feature [M,D] float32 anchors (un-normalised means), clip [M,C] float32 unit rows,
        median_distance float, view_index [M] int64, mask_id [M] int64 (row in that view's _f table),
        pixel_count [M] int64), all tensors on the device of the views."""
        if not self._feature:
            raise ValueError("PairCollector: no pairs were collected (no view had a mask id >= 0)")
        return dict(feature=torch.cat(self._feature).float(), clip=torch.cat(self._clip).float(),
                    median_distance=self.median_distance(), view_index=torch.cat(self._view),
                    mask_id=torch.cat(self._mask), pixel_count=torch.cat(self._count))


# ----------------------------------------------------------------------------------------------
# docs/method.md §4.2-4.3 kernel regression and 3D smoothing
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def kernel_mapping(ins_feat: torch.Tensor, anchors: torch.Tensor, anchor_clip: torch.Tensor,
                   top_k: int = 25, sigma: float = 0.1, chunk_size: int = 65536,
                   max_block_elems: int = 1 << 26) -> torch.Tensor:
    """Per-Gaussian language features by Nadaraya-Watson kernel regression (docs/method.md §4.2).

    ins_feat [N,D] raw per-Gaussian instance features (L2-normalised here)
    anchors [M,D] pair features as stored (un-normalised means; NOT normalised, docs/method.md §4.2)
    anchor_clip [M,C] pair CLIP vectors
    For each Gaussian: d_k = 1 - f.a_k; the top_k smallest d (all M if M < top_k);
    w = softmax(-d^2 / (2 sigma^2)) over those k (the safe form of exp(.)/sum exp(.), which in fp32
    underflows to 0/0 once all k distances exceed ~1.3); L = normalise(sum_k w_k c_k).
    Rows are processed in blocks of min(chunk_size, max_block_elems // M) so the [rows, M] distance
    block stays bounded (default 2^26 floats = 256 MiB). Returns [N,C] float32 on ins_feat's device.
    """
    if ins_feat.dim() != 2 or anchors.dim() != 2 or anchor_clip.dim() != 2:
        raise ValueError(f"kernel_mapping: expected ins_feat [N,D], anchors [M,D], anchor_clip [M,C]; got "
                         f"{tuple(ins_feat.shape)}, {tuple(anchors.shape)}, {tuple(anchor_clip.shape)}")
    M = anchors.shape[0]
    if M == 0 or anchor_clip.shape[0] != M or anchors.shape[1] != ins_feat.shape[1]:
        raise ValueError(f"kernel_mapping: need M >= 1 anchors with matching dims; got ins_feat "
                         f"{tuple(ins_feat.shape)}, anchors {tuple(anchors.shape)}, anchor_clip {tuple(anchor_clip.shape)}")
    if sigma <= 0 or top_k < 1 or chunk_size < 1:
        raise ValueError(f"kernel_mapping: need sigma > 0, top_k >= 1, chunk_size >= 1; got {sigma}, {top_k}, {chunk_size}")
    device = ins_feat.device
    a = anchors.to(device, torch.float32)        # [M,D]
    c = anchor_clip.to(device, torch.float32)    # [M,C]
    k = min(int(top_k), M)
    inv_two_s2 = 1.0 / (2.0 * float(sigma) ** 2)
    N = ins_feat.shape[0]
    out = torch.empty(N, c.shape[1], dtype=torch.float32, device=device)
    for s in range(0, N, chunk_size):
        f = F.normalize(ins_feat[s:s + chunk_size].float(), dim=-1)      # [n,D]
        sim, idx = anchor_topk(f, a, k, max_block_elems)            # [n,k]: smallest d = largest f.a
        dk = 1.0 - sim                                              # [n,k]
        w = torch.softmax(-dk * dk * inv_two_s2, dim=1)             # [n,k]
        # sum_k w_k c_idx_k without materialising [n,k,C]
        acc = F.embedding_bag(idx, c, per_sample_weights=w, mode="sum")   # [n,C]
        out[s:s + chunk_size] = F.normalize(acc, dim=-1)
    return out


def anchor_topk(f: torch.Tensor, anchors: torch.Tensor, k: int, max_block_elems: int = 1 << 26,
                groups: int = 1024, margin: float = 1e-5, seed: int = 0):
    """(sim, idx) [n, k]: the ``k`` largest ``f · a`` over the anchors [M, D] for each unit row of ``f``
    [n, D], exactly, without scoring every anchor against every row when that is large.

    Rows are grouped around ``groups`` centres (rows drawn with a seeded generator; each row joins the
    most similar one). For a group with mean c and radius r (its farthest row), every row's score obeys
    ``|f·a - c·a| <= r ||a||`` (Cauchy-Schwarz); if L is the k-th largest lower bound ``c·a - r ||a||``,
    at least k anchors score >= L for every row of the group, so its top k lie among the anchors whose
    upper bound reaches L (less ``margin``, for float rounding). Only those are scored. Small problems
    (n x M <= max_block_elems) and loose groups (more than half the anchors left) score everything;
    either way the answer is the brute-force one, up to the order of float additions in the products.
    Row blocks keep every [rows, candidates] product under ``max_block_elems`` floats."""
    n, M = f.shape[0], anchors.shape[0]
    if n * M <= max_block_elems or n < 4 * groups:
        return _topk_blocks(f, anchors, k, max_block_elems)
    gen = torch.Generator().manual_seed(seed)
    centres = f[torch.randperm(n, generator=gen)[:groups].to(f.device)]
    rows_per = max(1, int(max_block_elems) // groups)
    assign = torch.cat([(f[s:s + rows_per] @ centres.T).argmax(dim=1) for s in range(0, n, rows_per)])
    order = torch.argsort(assign, stable=True)
    counts = torch.bincount(assign, minlength=groups).tolist()
    a_norm = anchors.norm(dim=1)
    sim_out = torch.empty(n, k, dtype=f.dtype, device=f.device)
    idx_out = torch.empty(n, k, dtype=torch.int64, device=f.device)
    start = 0
    for cnt in counts:
        rows = order[start:start + cnt]
        start += cnt
        if cnt == 0:
            continue
        fr = f[rows]
        centre = fr.mean(dim=0)
        radius = (fr - centre).norm(dim=1).max()
        ca = anchors @ centre
        bound = torch.topk(ca - radius * a_norm, k).values[-1]
        cand = torch.nonzero(ca + radius * a_norm >= bound - margin).squeeze(1)
        if cand.numel() > M // 2:
            sim, idx = _topk_blocks(fr, anchors, k, max_block_elems)
        else:
            sim, idx = _topk_blocks(fr, anchors[cand], k, max_block_elems)
            idx = cand[idx]
        sim_out[rows], idx_out[rows] = sim, idx
    return sim_out, idx_out


def _topk_blocks(f: torch.Tensor, anchors: torch.Tensor, k: int, max_block_elems: int):
    """Brute force: the top k of every row of ``f @ anchors.T``, in row blocks of bounded size."""
    rows = max(1, int(max_block_elems) // max(anchors.shape[0], 1))
    sims, idxs = [], []
    for s in range(0, f.shape[0], rows):
        sim, idx = torch.topk(f[s:s + rows] @ anchors.T, k, dim=1)
        sims.append(sim)
        idxs.append(idx)
    return torch.cat(sims), torch.cat(idxs)


@torch.no_grad()
def knn_indices(xyz: torch.Tensor, k: int, chunk_size: int = 65536) -> torch.Tensor:
    """int64 [N, k] on xyz's device: each point's k nearest points by xyz, itself included (first; ties
    as scipy's cKDTree), from one tree built on CPU in float64 and queried chunk by chunk with every core."""
    from scipy.spatial import cKDTree

    N = xyz.shape[0]
    k = min(int(k), N)
    pts = xyz.detach().cpu().double().numpy()
    tree = cKDTree(pts)
    out = np.empty((N, k), dtype=np.int64)
    for s in range(0, N, chunk_size):
        _, idx = tree.query(pts[s:s + chunk_size], k=k, workers=-1)
        out[s:s + chunk_size] = np.asarray(idx, dtype=np.int64).reshape(-1, k)
    return torch.from_numpy(out).to(xyz.device)


@torch.no_grad()
def smooth_knn(xyz: torch.Tensor, lang: torch.Tensor, k: int = 10, chunk_size: int = 65536) -> torch.Tensor:
    """3D smoothing of a language field (docs/method.md §4.3), from a copy (docs/deviations.md #2).

    xyz [N,3] Gaussian centres; lang [N,C] per-Gaussian language features.
    out_i = normalise(mean of lang_j over the k nearest Gaussians j of i by xyz, i itself included),
    always reading the unmodified input, so the result does not depend on chunking or order.
    KNN: ``knn_indices`` (scipy cKDTree on CPU, float64); the averaging runs on lang's device, chunk by
    chunk. k <= 1 returns a copy; k > N uses all N. Returns [N,C] float32.
    """
    if xyz.dim() != 2 or xyz.shape[1] != 3 or lang.dim() != 2 or lang.shape[0] != xyz.shape[0]:
        raise ValueError(f"smooth_knn: expected xyz [N,3] and lang [N,C]; got {tuple(xyz.shape)}, {tuple(lang.shape)}")
    if chunk_size < 1:
        raise ValueError(f"smooth_knn: chunk_size must be >= 1, got {chunk_size}")
    N = xyz.shape[0]
    k = min(int(k), N)
    src = lang.detach().float()
    if k <= 1:
        return src.clone()
    idx = knn_indices(xyz, k, chunk_size).to(src.device)
    out = torch.empty_like(src)
    for s in range(0, N, chunk_size):
        out[s:s + chunk_size] = F.normalize(F.embedding_bag(idx[s:s + chunk_size], src, mode="mean"), dim=-1)
    return out


# ----------------------------------------------------------------------------------------------
# docs/method.md §4.4 MLP mapping
# ----------------------------------------------------------------------------------------------
class MLPMapping(torch.nn.Module):
    """The release's decoder (autoencoder/model.py, encoder unused): Linear layers
    in_dim -> hidden... -> out_dim (default 16->32->64->128->256->256->512), ReLU between layers
    (not after the last), output L2-normalised. forward(x [B,in_dim]) -> [B,out_dim]."""

    def __init__(self, in_dim: int = 16, hidden: Sequence[int] = (32, 64, 128, 256, 256), out_dim: int = 512):
        super().__init__()
        dims = [int(in_dim), *[int(h) for h in hidden], int(out_dim)]
        layers = []
        for i in range(len(dims) - 1):
            if i > 0:
                layers.append(torch.nn.ReLU())
            layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        self.net = torch.nn.Sequential(*layers)
        self.in_dim, self.out_dim = dims[0], dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


def _mlp_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float) -> torch.Tensor:
    """pred, target [B,C] -> MSE + cos_weight * (1 - mean cosine along the feature axis)."""
    cos = F.cosine_similarity(pred, target, dim=-1)   # [B]
    return F.mse_loss(pred, target) + cos_weight * (1.0 - cos.mean())


def fit_mlp(pairs_feature: torch.Tensor, pairs_clip: torch.Tensor, epochs: int = 100, lr: float = 1e-3,
            batch_size: int = 64, cos_weight: float = 1e-3, seed: int = 0, progress: bool = False,
            hidden: Sequence[int] = (32, 64, 128, 256, 256)) -> MLPMapping:
    """Trains the MLP mapping on the pairs (docs/method.md §4.4), on pairs_feature's device.

    pairs_feature [M,D] anchors (L2-normalised here, eps 1e-8); pairs_clip [M,C] targets as stored.
    Loss = MSE + cos_weight * (1 - mean cosine). The cosine is taken along the FEATURE axis (dim -1):
    the release's dim-0 (batch-axis) cosine is a bug inherited from LangSplat (docs/deviations.md #4).
    Adam(lr), batches of batch_size from a torch.Generator(seed) permutation per epoch; the weights
    are initialised under torch.manual_seed(seed) in a forked RNG (global RNG state untouched).
    After every epoch the loss is evaluated on the whole training set (no grad) and the weights of
    the epoch with the lowest value are returned (the release keeps a "best" checkpoint judged on the
    training set in its last epochs). Returns the model in eval mode.
    """
    if pairs_feature.dim() != 2 or pairs_clip.dim() != 2 or pairs_feature.shape[0] != pairs_clip.shape[0]:
        raise ValueError(f"fit_mlp: expected pairs_feature [M,D] and pairs_clip [M,C]; got "
                         f"{tuple(pairs_feature.shape)}, {tuple(pairs_clip.shape)}")
    if pairs_feature.shape[0] == 0 or epochs < 1 or batch_size < 1:
        raise ValueError(f"fit_mlp: need M >= 1 pairs, epochs >= 1, batch_size >= 1; got "
                         f"M={pairs_feature.shape[0]}, epochs={epochs}, batch_size={batch_size}")
    device = pairs_feature.device
    x = F.normalize(pairs_feature.float(), dim=-1, eps=MLP_NORM_EPS)   # [M,D]
    y = pairs_clip.to(device, torch.float32)                           # [M,C]
    M = x.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPMapping(x.shape[1], hidden, y.shape[1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    best_loss, best_state = math.inf, None
    it = range(epochs)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="mlp mapping")
    for _ in it:
        model.train()
        perm = torch.randperm(M, generator=gen).to(device)
        for s in range(0, M, batch_size):
            b = perm[s:s + batch_size]
            loss = _mlp_loss(model(x[b]), y[b], cos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            full = sum(float(_mlp_loss(model(x[s:s + 65536]), y[s:s + 65536], cos_weight)) * x[s:s + 65536].shape[0]
                       for s in range(0, M, 65536)) / M
        if full < best_loss:
            best_loss, best_state = full, copy.deepcopy(model.state_dict())
        if progress:
            it.set_postfix(loss=f"{full:.3e}", best=f"{best_loss:.3e}")
    model.load_state_dict(best_state)
    model.eval()
    return model


def mlp_mapping(model: MLPMapping, ins_feat: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """ins_feat [N,D] raw per-Gaussian features -> [N,C] float32 decoded language features on
    ins_feat's device (inputs normalised with eps 1e-8; run on the model's device, chunked, no grad)."""
    if ins_feat.dim() != 2 or ins_feat.shape[1] != model.in_dim:
        raise ValueError(f"mlp_mapping: expected ins_feat [N,{model.in_dim}], got {tuple(ins_feat.shape)}")
    mdev = next(model.parameters()).device
    out = torch.empty(ins_feat.shape[0], model.out_dim, dtype=torch.float32, device=ins_feat.device)
    with torch.no_grad():
        for s in range(0, ins_feat.shape[0], chunk_size):
            f = F.normalize(ins_feat[s:s + chunk_size].to(mdev, torch.float32), dim=-1, eps=MLP_NORM_EPS)
            out[s:s + chunk_size] = model(f).to(out.device)
    return out


# ----------------------------------------------------------------------------------------------
# cache tag
# ----------------------------------------------------------------------------------------------
def inputs_hash(*items) -> str:
    """sha256 hex digest of the given inputs, to tag a cached language field (docs/deviations.md #3).

    Tensors and numpy arrays contribute dtype, shape and raw data bytes (moved to CPU, contiguous);
    anything else must be JSON-serialisable (os.PathLike is taken as its string) and contributes
    ``json.dumps(value, sort_keys=True)``. Every item is type-tagged and length-prefixed, so
    ("ab",) and ("a", "b") differ. Order matters.
    """
    h = hashlib.sha256()

    def put(tag: bytes, payload: bytes) -> None:
        h.update(tag + len(payload).to_bytes(8, "little") + payload)

    for i, x in enumerate(items):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            put(b"T", f"{t.dtype}|{tuple(t.shape)}".encode())
            put(b"D", t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, np.ndarray):
            a = np.ascontiguousarray(x)
            put(b"A", f"{a.dtype.str}|{a.shape}".encode())
            put(b"D", a.tobytes())
        else:
            v = os.fspath(x) if isinstance(x, os.PathLike) else x
            try:
                s = json.dumps(v, sort_keys=True)
            except (TypeError, ValueError) as e:
                raise ValueError(f"inputs_hash: item {i} of type {type(x).__name__} is neither a tensor, "
                                 f"an array nor JSON-serialisable ({e})") from None
            put(b"J", s.encode())
    return h.hexdigest()
