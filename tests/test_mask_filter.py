"""LangSplat's per-level mask NMS: hand-built keep/drop cases and a direct O(N^2) transcription of docs/method.md §6.3."""
import numpy as np
import pytest
import torch

import preprocess.mask_filter as mf
from preprocess.mask_filter import mask_nms, masks_update, pair_counts


def reference_mask_nms(masks, scores, iou_thr=0.8, score_thr=0.7, inner_thr=0.5):
    """The mask filter of docs/method.md §6.3 written out pair by pair (float32 counts and ratios)."""
    scores, idx = scores.sort(0, descending=True)
    m = masks[idx]
    n = len(m)
    area = m.sum(dim=(1, 2)).to(torch.float32)
    iou = torch.zeros((n, n), dtype=torch.float32)
    inner = torch.zeros((n, n), dtype=torch.float32)
    for i in range(n):
        for j in range(i, n):
            inter = (m[i] & m[j]).sum().to(torch.float32)
            union = (m[i] | m[j]).sum().to(torch.float32)
            iou[i, j] = inter / union
            ri, rj = inter / area[i], inter / area[j]
            if ri < 0.5 and rj >= 0.85:
                inner[i, j] = 1 - rj * ri
            if ri >= 0.85 and rj < 0.5:
                inner[j, i] = 1 - rj * ri
    iou_max = iou.triu(diagonal=1).max(dim=0).values
    inner_u = inner.triu(diagonal=1).max(dim=0).values
    inner_l = inner.tril(diagonal=1).max(dim=0).values
    keep_iou = iou_max <= iou_thr
    keep_conf = scores > score_thr
    keep_u = inner_u <= 1 - inner_thr
    keep_l = inner_l <= 1 - inner_thr
    for k in (keep_iou, keep_conf, keep_u, keep_l):  # the intended top-min(3, N) fallback
        if k.sum() == 0:
            k[:min(3, n)] = True
    return idx[keep_iou & keep_conf & keep_u & keep_l]


def rect(h, w, r0, r1, c0, c1):
    m = torch.zeros((h, w), dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def test_not_greedy_iou_drop():
    # A, B, C: 100-px-wide strips; IoU(A,B)=95/105=.905, IoU(B,C)=93/107=.869, IoU(A,C)=88/112=.786
    a, b, c = rect(4, 120, 0, 4, 0, 100), rect(4, 120, 0, 4, 5, 105), rect(4, 120, 0, 4, 12, 112)
    keep = mask_nms(torch.stack([c, a, b]), torch.tensor([0.85, 0.95, 0.9], dtype=torch.float64))
    assert keep.tolist() == [1]  # C goes although B (which drops it) is itself dropped; greedy would keep C
    # with B gone, C survives (IoU with A is .786 <= .8)
    keep = mask_nms(torch.stack([c, a]), torch.tensor([0.85, 0.95], dtype=torch.float64))
    assert keep.tolist() == [1, 0]  # descending score order


def test_containment_drops_smaller_whatever_the_scores():
    big = rect(30, 30, 0, 20, 0, 20)                        # 400 px
    inside = rect(30, 30, 5, 10, 5, 10)                     # 25 px fully inside: 25/400 < .5, 1 >= .85
    mostly = rect(30, 30, 12, 22, 11, 21)                   # 10x10, 8x9 inside: 72/100 < .85
    nine = rect(30, 30, 2, 12, 11, 21)                      # 10x10, cols 11..19 inside: 90/100 >= .85
    masks = torch.stack([big, inside, mostly, nine])
    scores = torch.tensor([0.75, 0.99, 0.9, 0.95], dtype=torch.float64)
    keep = sorted(mask_nms(masks, scores).tolist())
    assert keep == [0, 2]
    assert sorted(reference_mask_nms(masks, scores).tolist()) == keep
    # inner_thr = 0 never drops for containment
    assert sorted(mask_nms(masks, scores, inner_thr=0.0).tolist()) == [0, 1, 2, 3]


def test_score_threshold_is_strict_and_fallback_top_min3():
    masks = torch.stack([rect(10, 50, 0, 10, 10 * k, 10 * k + 8) for k in range(5)])  # disjoint
    scores = torch.tensor([0.7, 0.7000001, 0.5, 0.65, 0.69], dtype=torch.float64)
    assert mask_nms(masks, scores).tolist() == [1]          # 0.7 itself fails (score > 0.7)
    low = torch.tensor([0.3, 0.6, 0.5, 0.7, 0.1], dtype=torch.float64)
    assert mask_nms(masks, low).tolist() == [3, 1, 2]       # nothing passes -> the 3 best
    assert mask_nms(masks[:2], low[:2]).tolist() == [1, 0]  # N = 2 -> both (top-min(3, N))
    assert mask_nms(masks[:1], low[:1]).tolist() == [0]
    # the fallback only rescues the score test: an IoU-duplicate of the best is still dropped
    dup = torch.stack([masks[0], masks[0].clone(), masks[1]])
    assert mask_nms(dup, torch.tensor([0.6, 0.5, 0.4], dtype=torch.float64)).tolist() == [0, 2]
    assert mask_nms(masks[:0], low[:0]).numel() == 0


def random_masks(rng, n, h=24, w=32):
    out = []
    base = []
    for i in range(n):
        kind = rng.integers(0, 4)
        if kind == 0 or not base:       # random rectangle
            r0, c0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
            m = np.zeros((h, w), bool)
            m[r0:rng.integers(r0 + 2, h + 1), c0:rng.integers(c0 + 2, w + 1)] = True
        elif kind == 1:                 # near-duplicate of an earlier mask (IoU rule)
            m = base[rng.integers(len(base))].copy()
            flip = rng.random((h, w)) < 0.04
            m ^= flip & np.roll(m, 1, axis=1)
        elif kind == 2:                 # a piece of an earlier mask (containment rule)
            m = base[rng.integers(len(base))] & (rng.random((h, w)) < rng.uniform(0.1, 0.9))
        else:                           # random blob
            m = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        if not m.any():
            m[rng.integers(h), rng.integers(w)] = True
        base.append(m)
        out.append(m)
    return torch.from_numpy(np.stack(out))


@pytest.mark.parametrize("thr", [(0.8, 0.7, 0.5), (0.5, 0.6, 0.3), (0.95, 0.9, 0.7)])
def test_vectorised_equals_reference_on_random_masks(thr):
    rng = np.random.default_rng(sum(int(t * 100) for t in thr))
    fired = set()
    for trial in range(12):
        n = int(rng.integers(1, 18))
        masks = random_masks(rng, n)
        scores = torch.from_numpy(rng.uniform(0.4, 1.0, n))
        if trial % 4 == 0:
            scores = scores * 0.6   # all low: fallback
        got = mask_nms(masks, scores, *thr)
        want = reference_mask_nms(masks, scores, *thr)
        assert got.tolist() == want.tolist(), (trial, n)
        fired.add(len(got) < n)
    assert True in fired


def test_pair_counts_exact_across_chunks(monkeypatch):
    rng = np.random.default_rng(3)
    m = rng.random((7, 13, 11)) < 0.5
    monkeypatch.setattr(mf, "_CHUNK_ELEMS", 7 * 10)  # 10 pixels per chunk -> 15 chunks
    got = pair_counts(torch.from_numpy(m))
    flat = m.reshape(7, -1).astype(np.int64)
    assert got.dtype == torch.float64
    assert np.array_equal(got.numpy(), flat @ flat.T)


def test_masks_update_keeps_list_order_and_skips_empty_levels():
    big = rect(30, 30, 0, 20, 0, 20).numpy()
    small = rect(30, 30, 5, 10, 5, 10).numpy()
    other = rect(30, 30, 22, 30, 22, 30).numpy()
    rec = lambda m, iou, st, tag: {"segmentation": m, "predicted_iou": iou, "stability_score": st, "tag": tag}
    levels = {"default": [rec(other, 0.8, 0.95, "o"), rec(small, 0.99, 0.99, "s"), rec(big, 0.9, 0.9, "b")],
              "s": [], "m": [rec(other, 0.75, 0.9, "low")], "l": [rec(big, 1.0, 1.0, "b")]}
    out = masks_update(levels, iou_thr=0.8, score_thr=0.7, inner_thr=0.5)
    assert [r["tag"] for r in out["default"]] == ["o", "b"]  # original order, small one contained
    assert out["s"] == []
    assert [r["tag"] for r in out["m"]] == ["low"]           # 0.675 <= 0.7 but top-min(3, 1) fallback
    assert [r["tag"] for r in out["l"]] == ["b"]


def test_bad_shapes():
    with pytest.raises(ValueError, match="masks"):
        mask_nms(torch.zeros((2, 3), dtype=torch.bool), torch.zeros(2))
