"""The per-Gaussian language field, stored and queried in its factored form (docs/method.md §4.5).

The kernel field (docs/method.md §4.2-4.3) is structured: Gaussian j's unsmoothed vector is a
normalised weighted sum of ``top_k`` anchors' CLIP vectors, ``L0_j = Σ_k w_jk c_a(j,k) / n_j``, and
the field is the normalised sum over its ``smooth_k`` nearest Gaussians, ``L_i = Σ_{j∈nbr(i)} L0_j /
m_i`` (the mean's 1/K cancels in the normalisation). A query only needs dot products with a few text
vectors t, so

    L_i · t = (1 / m_i) Σ_{j∈nbr(i)} Σ_k (w_jk / n_j) (c_a(j,k) · t)

is evaluated anchors x texts first ([M, Q]), then the top-k weights (one sparse sum) and the
neighbour sum (a second one; both in C++ on a CPU, scene/csrc/field_sums.cpp, else two
``embedding_bag``): O(M·C·Q + N·(top_k + smooth_k)·Q) instead of O(N·C·Q), and the dense N x 512
field is never stored. ``KernelField`` holds ``anchor_clip [M, C]``, ``idx [N, k]`` (int32),
``weight [N, k]`` (= w / n, float32), ``nbr [N, K]`` (int32, itself included; None without
smoothing) and ``scale [N]`` (= 1 / m). ``DenseField`` wraps an [N, C] tensor (the MLP mapping's
field, and the reference the tests compare with). Both answer ``dots`` (the relevancy's input),
``rows`` (dense vectors of some Gaussians, e.g. for a cluster's mean), ``subset`` and ``dense``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from gaussian_renderer.extension import Extension

from .mapping import anchor_topk

NORM_EPS = 1e-12   # F.normalize's eps, as the dense computation (scene/mapping.py)
# KernelField's two sparse sums in C++ (CPU; ~2x torch's embedding_bag at 1M Gaussians, the same sums)
_SUMS = Extension(Path(__file__).resolve().parent / "csrc" / "field_sums.cpp", "cos3d_field", "weighted_sum",
                  what="field sums", fallback="the factored field's queries use torch's embedding_bag")


class DenseField:
    """An [N, C] language field held as a tensor (any float dtype; computed in float32)."""

    def __init__(self, values: torch.Tensor):
        if values.dim() != 2:
            raise ValueError(f"DenseField: expected [N, C], got {tuple(values.shape)}")
        self.values = values

    @property
    def shape(self) -> tuple:
        return tuple(self.values.shape)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def dots(self, vectors: torch.Tensor, chunk_size: int = 262144) -> torch.Tensor:
        """[N, Q] = L · vectorsᵀ in float32, in chunks of ``chunk_size`` Gaussians."""
        v = vectors.to(self.device, torch.float32).T
        out = torch.empty(self.shape[0], v.shape[1], dtype=torch.float32, device=self.device)
        for a in range(0, self.shape[0], chunk_size):
            out[a:a + chunk_size] = self.values[a:a + chunk_size].float() @ v
        return out

    def rows(self, index) -> torch.Tensor:
        return self.values[index].float()

    def subset(self, keep: torch.Tensor) -> "DenseField":
        return DenseField(self.values[keep])

    def dense(self, chunk_size: int = 65536) -> torch.Tensor:
        return self.values.float()


class KernelField:
    """The kernel field in factored form (module docstring). Tensors on one device.

    ``perm`` (optional, int [N]): the rows are stored in this order of the Gaussians (row r is Gaussian
    ``perm[r]``; ``nbr`` then holds row numbers), a spatial order in which a Gaussian's neighbours are
    near it in memory, so the neighbour sum reads from cache. Every method takes and returns Gaussian
    order but ``row_dots`` (row order; ``inverse`` maps Gaussians to rows)."""

    def __init__(self, anchor_clip: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor,
                 nbr: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 perm: torch.Tensor | None = None, check: bool = True):
        N = idx.shape[0]
        if idx.shape != weight.shape or anchor_clip.dim() != 2 or (nbr is None) != (scale is None):
            raise ValueError(f"KernelField: idx {tuple(idx.shape)} / weight {tuple(weight.shape)} differ, or "
                             f"anchor_clip is not [M, C], or only one of nbr / scale is given")
        if nbr is not None and (nbr.shape[0] != N or scale.shape != (N,)):
            raise ValueError(f"KernelField: nbr {tuple(nbr.shape)} / scale {tuple(scale.shape)} do not fit N = {N}")
        if perm is not None and perm.shape != (N,):
            raise ValueError(f"KernelField: perm {tuple(perm.shape)} does not fit N = {N}")
        if check:  # once here, so the sums (scene/csrc/field_sums.cpp) may trust every index
            for name, t, size in (("idx", idx, anchor_clip.shape[0]), ("nbr", nbr, N), ("perm", perm, N)):
                if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
                    raise ValueError(f"KernelField: {name} holds indices outside [0, {size}): "
                                     f"[{int(t.min())}, {int(t.max())}]")
        self.anchor_clip, self.idx, self.weight, self.nbr, self.scale = anchor_clip, idx, weight, nbr, scale
        self.perm = perm
        self.inverse = None   # int64 [N]: the row of each Gaussian
        if perm is not None:
            self.inverse = torch.full((N,), -1, dtype=torch.int64, device=perm.device)
            self.inverse[perm.long()] = torch.arange(N, device=perm.device)
            if check and bool((self.inverse < 0).any()):  # N in-range values, one slot left: a repeat
                raise ValueError("KernelField: perm is not a permutation of the rows")

    @property
    def shape(self) -> tuple:
        return (self.idx.shape[0], self.anchor_clip.shape[1])

    @property
    def device(self) -> torch.device:
        return self.idx.device

    def to(self, device) -> "KernelField":
        move = (lambda t: None if t is None else t.to(device))
        return KernelField(*(move(t) for t in (self.anchor_clip, self.idx, self.weight, self.nbr, self.scale,
                                               self.perm)), check=False)  # checked when self was built

    def state(self) -> dict:
        return {"anchor_clip": self.anchor_clip, "idx": self.idx, "weight": self.weight, "nbr": self.nbr,
                "scale": self.scale, "perm": self.perm}

    def row_dots(self, vectors: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """[N, Q] = L · vectorsᵀ through the structure (float32), in row order (see ``dots``)."""
        return self._dots(vectors, backend, gaussian_order=False)

    def dots(self, vectors: torch.Tensor, chunk_size: int = 0, backend: str = "auto") -> torch.Tensor:
        """[N, Q] = L · vectorsᵀ (float32), in Gaussian order. ``backend``: "torch" (two
        ``embedding_bag``, then a reordering), "cpp" (scene/csrc/field_sums.cpp: CPU tensors, int32
        indices; writes Gaussian order directly) or "auto" (cpp where it applies and builds, else
        torch). Both sum each row in index order."""
        return self._dots(vectors, backend, gaussian_order=True)

    def _dots(self, vectors: torch.Tensor, backend: str, gaussian_order: bool) -> torch.Tensor:
        if backend not in ("auto", "torch", "cpp"):
            raise ValueError(f"KernelField: backend must be auto, torch or cpp, got {backend!r}")
        per_anchor = self.anchor_clip.float() @ vectors.to(self.device, torch.float32).T          # [M, Q]
        cpp_fits = (self.device.type == "cpu" and self.idx.dtype == torch.int32
                    and (self.nbr is None or self.nbr.dtype == torch.int32))
        if backend == "cpp" and not cpp_fits:
            raise ValueError("KernelField: the cpp backend needs CPU tensors and int32 indices")
        if backend == "cpp" or (backend == "auto" and cpp_fits and _SUMS.available()):
            return self._cpp_dots(per_anchor, gaussian_order)
        out = F.embedding_bag(self.idx, per_anchor, per_sample_weights=self.weight, mode="sum")  # [N, Q]
        if self.nbr is not None:
            out = F.embedding_bag(self.nbr, out, mode="sum") * self.scale[:, None]
        if gaussian_order and self.inverse is not None:
            out = torch.index_select(out, 0, self.inverse)     # (2x faster than out[self.inverse])
        return out

    def _cpp_dots(self, per_anchor: torch.Tensor, gaussian_order: bool) -> torch.Tensor:
        ops, (N, Q), nt = _SUMS.ops(), (self.idx.shape[0], per_anchor.shape[1]), torch.get_num_threads()
        width = 8 if Q <= 8 else 16 if Q <= 16 else 32         # the table widths the kernel is built for
        idx, weight = self.idx.contiguous(), self.weight.float().contiguous()
        nbr, scale = (None, None) if self.nbr is None else (self.nbr.contiguous(), self.scale.float().contiguous())
        rows = (self.perm.to(torch.int32).contiguous() if gaussian_order and self.perm is not None
                else torch.empty(0, dtype=torch.int32))         # where each row's result goes
        out = []
        for q0 in range(0, Q, width):                           # zero-padded column blocks
            cols = min(width, Q - q0)
            block = F.pad(per_anchor[:, q0:q0 + cols], (0, width - cols)).contiguous()
            res = torch.empty(N, cols)
            if nbr is None:
                ops.weighted_sum(idx, weight, block, res, rows, nt)
            else:
                raw = torch.empty(N, width)
                ops.weighted_sum(idx, weight, block, raw, torch.empty(0, dtype=torch.int32), nt)
                ops.scaled_sum(nbr, scale, raw, res, rows, nt)
            out.append(res)
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)

    def _rows_of(self, index) -> torch.Tensor:
        """Gaussian ids (long or bool) -> row numbers (long)."""
        index = torch.as_tensor(index, device=self.device)
        if index.dtype == torch.bool:
            index = torch.nonzero(index).squeeze(1)
        return index.long() if self.inverse is None else self.inverse[index.long()]

    def _unsmoothed(self, rows) -> torch.Tensor:
        return F.embedding_bag(self.idx[rows], self.anchor_clip.float(), per_sample_weights=self.weight[rows],
                               mode="sum")

    def unsmoothed(self, index) -> torch.Tensor:
        """[n, C] L0 of the Gaussians ``index``."""
        return self._unsmoothed(self._rows_of(index))

    def rows(self, index) -> torch.Tensor:
        """[n, C] dense L of the Gaussians ``index`` (a long index or a bool mask)."""
        r = self._rows_of(index)
        if self.nbr is None:
            return self._unsmoothed(r)
        nb = self.nbr[r].long()                                                # [n, K] rows
        l0 = self._unsmoothed(nb.reshape(-1)).reshape(nb.shape[0], nb.shape[1], -1)
        return l0.sum(dim=1) * self.scale[r, None]

    def dense(self, chunk_size: int = 65536) -> torch.Tensor:
        """[N, C] float32: the whole field (the reference; memory N x C)."""
        return _dense_from_rows(self, chunk_size)

    def subset(self, keep: torch.Tensor) -> "SubsetField":
        return SubsetField(self, keep)


def spatial_order(xyz: torch.Tensor, bits: int = 10) -> torch.Tensor:
    """int64 [N]: the Gaussians sorted along a Morton (Z-order) curve of their centres, quantised to
    2^bits cells per axis of their bounding box (nearby points get nearby positions)."""
    x = xyz.detach().double()
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    q = ((x - lo) / (hi - lo).clamp_min(1e-12) * ((1 << bits) - 1)).round().long()
    code = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for b in range(bits):
        for axis in range(3):
            code |= ((q[:, axis] >> b) & 1) << (3 * b + axis)
    return torch.argsort(code, stable=True)


class SubsetField:
    """The rows ``keep`` of a field (the viewer's model after Remove): the parent's values, unchanged."""

    def __init__(self, parent, keep: torch.Tensor):
        keep = torch.as_tensor(keep, device=parent.device)
        self.parent = parent
        self.keep = torch.nonzero(keep).squeeze(1) if keep.dtype == torch.bool else keep.long()

    @property
    def shape(self) -> tuple:
        return (self.keep.shape[0], self.parent.shape[1])

    @property
    def device(self) -> torch.device:
        return self.parent.device

    def dots(self, vectors: torch.Tensor, chunk_size: int = 262144) -> torch.Tensor:
        return self.parent.dots(vectors)[self.keep]

    def rows(self, index) -> torch.Tensor:
        return self.parent.rows(self.keep[torch.as_tensor(index, device=self.device)])

    def subset(self, keep: torch.Tensor) -> "SubsetField":
        keep = torch.as_tensor(keep, device=self.device)
        return SubsetField(self.parent, self.keep[keep])

    def dense(self, chunk_size: int = 65536) -> torch.Tensor:
        return _dense_from_rows(self, chunk_size)


def _dense_from_rows(field, chunk_size: int) -> torch.Tensor:
    """[N, C] float32 of a field, ``chunk_size`` rows at a time."""
    N = field.shape[0]
    if N == 0:
        return torch.zeros(field.shape, device=field.device)
    return torch.cat([field.rows(torch.arange(a, min(a + chunk_size, N), device=field.device))
                      for a in range(0, N, chunk_size)])


@torch.no_grad()
def factor_kernel_field(ins_feat: torch.Tensor, anchors: torch.Tensor, anchor_clip: torch.Tensor,
                        top_k: int, sigma: float, nbr: torch.Tensor | None, chunk_size: int = 65536,
                        xyz: torch.Tensor | None = None) -> KernelField:
    """The kernel field of docs/method.md §4.2-4.3 in factored form. Every Gaussian's most similar anchors
    come from one call of scene/mapping.py's exact ``anchor_topk``; ``nbr`` [N, K] the Gaussians' nearest neighbours in xyz (itself included) or None; with ``xyz`` (their
    centres) the rows are stored in spatial order (``spatial_order``)."""
    device = ins_feat.device
    c = anchor_clip.to(device, torch.float32)
    M = c.shape[0]
    k = min(int(top_k), M)
    inv_two_s2 = 1.0 / (2.0 * float(sigma) ** 2)
    N = ins_feat.shape[0]
    a = anchors.to(device, torch.float32)
    sim_all, idx = anchor_topk(F.normalize(ins_feat.float(), dim=-1), a, k)   # all rows at once: it bounds its memory
    smooth = nbr is not None and nbr.shape[1] > 1
    weight = torch.empty(N, k, dtype=torch.float32, device=device)
    # L0 of every Gaussian (N x C float32, as the dense mapping held) when the smoothing needs its norms
    l0 = torch.empty(N, c.shape[1], dtype=torch.float32, device=device) if smooth else None
    for s in range(0, N, chunk_size):
        dk = 1.0 - sim_all[s:s + chunk_size]
        w = torch.softmax(-dk * dk * inv_two_s2, dim=1)
        acc = F.embedding_bag(idx[s:s + chunk_size], c, per_sample_weights=w, mode="sum")   # [n, C]
        norm = acc.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
        weight[s:s + chunk_size] = w / norm
        if smooth:
            l0[s:s + chunk_size] = acc / norm
    idx = idx.to(torch.int32)
    if not smooth:
        return KernelField(c, idx, weight)
    # m_i = ||Σ_{j∈nbr(i)} L0_j||, chunk by chunk
    nbr = nbr.to(device, torch.int32)
    scale = torch.empty(N, dtype=torch.float32, device=device)
    for s in range(0, N, chunk_size):
        summed = F.embedding_bag(nbr[s:s + chunk_size], l0, mode="sum")
        scale[s:s + chunk_size] = 1.0 / summed.norm(dim=-1).clamp_min(NORM_EPS)
    del l0
    if xyz is None:
        return KernelField(c, idx, weight, nbr, scale)
    perm = spatial_order(xyz.to(device))                     # rows in space order (KernelField docstring)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(N, device=device)
    return KernelField(c, idx[perm].contiguous(), weight[perm].contiguous(),
                       inverse[nbr[perm].long()].to(torch.int32).contiguous(), scale[perm].contiguous(),
                       perm.to(torch.int32))


def to_state(field) -> dict:
    """A field as plain CPU tensors for ``torch.save`` (docs/formats.md §1.7): the factored kernel field
    as it is (float32 / int32), a dense one in half floats (as the dense cache always was)."""
    if isinstance(field, KernelField):
        return {"form": "kernel", **{k: None if v is None else v.cpu() for k, v in field.state().items()}}
    if isinstance(field, DenseField):
        return {"form": "dense", "language": field.values.half().cpu()}
    raise TypeError(f"to_state: not a stored field: {type(field).__name__}")


def from_state(state: dict, device="cpu"):
    """The field ``to_state`` wrote, on ``device`` (a dense one as float32)."""
    if state.get("form") == "kernel":
        return KernelField(state["anchor_clip"], state["idx"], state["weight"], state.get("nbr"),
                           state.get("scale"), state.get("perm")).to(device)
    if state.get("form") == "dense" or "language" in state:
        return DenseField(state["language"].to(device).float())
    raise ValueError(f"not a language-field state (keys {sorted(state)})")
