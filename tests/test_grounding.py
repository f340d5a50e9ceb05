"""Relevancy, rescale and the three selection modes (docs/method.md §5.1-5.4) on hand-built cases."""
import math

import numpy as np
import pytest
import torch

from scene.grounding import CANONICAL_NEGATIVES, refine_selection, relevancy, rescale, select


def _unit(x):
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# relevancy / rescale
def test_relevancy_matches_hand_computation():
    lang = _unit([[1.0, 0.2, 0.0], [0.1, 0.3, 1.0]])
    pos = _unit([[0.9, 0.1, 0.3]])
    neg = _unit([[0.0, 1.0, 0.0], [0.2, 0.2, 0.9]])
    got = relevancy(lang, pos, neg)
    assert got.shape == (1, 2)
    L, t, N = lang.tolist(), pos[0].tolist(), neg.tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    for i in range(2):
        ep = math.exp(10 * dot(L[i], t))
        want = min(ep / (ep + math.exp(10 * dot(L[i], n))) for n in N)
        assert got[0, i].item() == pytest.approx(want, rel=1e-12)
    assert CANONICAL_NEGATIVES == ("object", "things", "stuff", "texture")


def test_relevancy_chunked_stable_and_half_precision():
    g = torch.Generator().manual_seed(0)
    lang = _unit(torch.randn(37, 8, generator=g, dtype=torch.float64)).float()
    pos = _unit(torch.randn(3, 8, generator=g, dtype=torch.float64)).float()
    neg = _unit(torch.randn(4, 8, generator=g, dtype=torch.float64)).float()
    full = relevancy(lang, pos, neg)
    assert full.shape == (3, 37)
    assert torch.allclose(relevancy(lang, pos, neg, chunk_size=5), full)
    # dense formula (small temperature, no overflow issue) as a second reference
    e_p = torch.exp(10 * lang @ pos.T)                          # [N,Q]
    e_n = torch.exp(10 * lang @ neg.T)                          # [N,Nn]
    dense = (e_p[:, :, None] / (e_p[:, :, None] + e_n[:, None, :])).amin(dim=2).T
    assert torch.allclose(full, dense, atol=1e-6)
    # huge temperature: exp overflows in the naive formula, ours stays finite in [0,1]
    hot = relevancy(lang, pos, neg, temperature=1e4)
    assert torch.isfinite(hot).all() and (hot >= 0).all() and (hot <= 1).all()
    half = relevancy(lang.half(), pos.half(), neg.half())
    assert half.dtype == torch.float32 and torch.allclose(half, full, atol=5e-3)
    with pytest.raises(ValueError, match="negative"):
        relevancy(lang, pos, neg[:0])
    with pytest.raises(ValueError, match="dims"):
        relevancy(lang, pos[:, :4], neg)


def test_rescale_closed_form():
    r = torch.tensor([3.0, 3.5, 4.0, 4.5, 5.0])              # min 3, max 5
    assert torch.allclose(rescale(r), torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0]), atol=1e-6)
    r2 = torch.tensor([[0.2, 0.6, 1.0], [1.0, 1.0, 1.0]])       # per row; a flat row gives 0
    assert torch.allclose(rescale(r2), torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the refinement example: tight instance clusters along orthogonal axes (cross-cluster cos = 0),
# d = 0.1 -> thresholds T = 0.96, 0.97, 0.98, 0.99 (loosest first)
D = 0.1


def _scene():
    feats, score, alpha, name = [], [], [], []

    def add(axis, s, a, tag, angle=0.0, other=5):
        f = [0.0] * 6
        f[axis] = math.cos(angle)
        f[other] = math.sin(angle)                         # cos to the axis = cos(angle)
        feats.append(f), score.append(s), alpha.append(a), name.append(tag)

    for k in range(8):                                     # A: 8 relevant members
        add(0, 0.9, 0.9, "A", angle=0.01 * k)
    add(0, 0.2, 0.9, "A")                                  # A: two irrelevant members
    add(0, 0.1, 0.9, "A")
    add(0, 0.6, 0.05, "A")                                 # A: transparent member (no seed, in region)
    add(1, 0.85, 0.9, "B")                                 # B: two relevant outliers ...
    add(1, 0.8, 0.9, "B")
    for _ in range(8):                                     # ... in an irrelevant instance
        add(1, 0.1, 0.9, "B")
    for _ in range(6):                                     # C: irrelevant
        add(2, 0.0, 0.9, "C")
    add(3, 1.0, 0.05, "D")                                 # D: alone, top score, transparent
    return (torch.tensor(score), _unit(feats).float(), torch.tensor(alpha), np.array(name))


def test_refinement_selects_exactly_cluster_A():
    score, feats, alpha, name = _scene()
    # B: mean (0.85 + 0.8 + 8*0.1)/10 = 0.245 < 0.5 at every threshold -> rejected.
    # A: (0.9*(8*0.9 + 0.2 + 0.1) + 0.05*0.6) / (9*0.9 + 0.05) = 0.749 -> accepted at the loosest.
    # D would be accepted as its own region (mean 1.0) if it were ever a seed: it is not (α < 0.1).
    sel = refine_selection(score, feats, alpha, D)
    assert sel.dtype == torch.bool and sel.shape == score.shape
    assert np.array_equal(sel.numpy(), name == "A")
    assert sel[10]                    # the transparent A member is inside A's region
    assert not sel[-1]                # D never seeds
    # the same through select(); lowering the seed-opacity bar lets D seed (and be accepted)
    assert torch.equal(select("collaborative", score, feats, alpha, D), sel)
    sel_d = refine_selection(score, feats, alpha, D, seed_opacity=0.01)
    assert np.array_equal(sel_d.numpy(), (name == "A") | (name == "D"))


def test_refinement_loosest_first_then_stricter():
    # seed at angle 0 with 3 relevant core members (cos > 0.99) and a halo at cos 0.965:
    # the loose region (0.96) includes the halo, a stricter one (0.97) does not.
    def scene(halo_score):
        rows, score = [], []
        for ang in (0.0, 0.02, 0.04, 0.06):                # core: cos >= 0.998
            rows.append([math.cos(ang), math.sin(ang), 0.0]), score.append(0.9)
        halo = math.acos(0.965)
        for sign in (1, -1, 1, -1, 1, -1):                 # halo: cos 0.965 to the seed
            rows.append([math.cos(halo), sign * math.sin(halo) * 0.6, math.sin(halo) * 0.8]), score.append(halo_score)
        return torch.tensor(score), _unit(rows).float(), torch.full((10,), 0.8)
    core = np.arange(10) < 4
    # irrelevant halo: loose mean (4*0.9 + 6*0.1)/10 = 0.42 rejected; 0.97 -> core only, accepted
    s, f, a = scene(0.1)
    assert np.array_equal(refine_selection(s, f, a, D).numpy(), core)
    # a mildly relevant halo (mean (3.6 + 6*0.3)/10 = 0.54): the loosest region wins, halo included
    s, f, a = scene(0.3)
    assert refine_selection(s, f, a, D).all()
    # strictest-only thresholds never reach the halo
    s, f, a = scene(0.3)
    assert np.array_equal(refine_selection(s, f, a, D, multipliers=(0.1,)).numpy(), core)


def test_language_only_and_instance_seed_on_the_example():
    score, feats, alpha, name = _scene()
    lang = select("language_only", score, feats, alpha, D)
    assert np.array_equal(lang.numpy(), score.numpy() > 0.5)  # A's 8 + transparent A + B's 2 + D
    assert lang.sum() == 8 + 1 + 2 + 1
    # instance_seed: seed = best score with α > 0.1 -> an A member (0.9); region cos > 1 - 0.3 d
    inst = select("instance_seed", score, feats, alpha, D)
    assert np.array_equal(inst.numpy(), name == "A")
    # if B's outliers were the most relevant, instance_seed takes all of B, unconditionally
    score_b = score.clone()
    score_b[11] = 0.95
    assert np.array_equal(select("instance_seed", score_b, feats, alpha, D).numpy(), name == "B")
    with pytest.raises(ValueError, match="instance_clusters"):   # needs the language field
        select("instance_only", score, feats, alpha, D)
    with pytest.raises(ValueError, match="unknown mode"):
        select("both", score, feats, alpha, D)


def _naive_refinement(score, feats, alpha, d, tau=0.5, seed_opacity=0.1, mult=(0.4, 0.3, 0.2, 0.1)):
    """Direct transcription of docs/method.md §5.3 (argmax every iteration), numpy float64."""
    s, f, a = score.double().numpy(), feats.double().numpy(), alpha.double().numpy()
    N = len(s)
    processed = np.zeros(N, bool)
    selected = np.zeros(N, bool)
    while True:
        cand = (~processed) & (s > tau) & (a > seed_opacity)
        if not cand.any():
            return selected
        g = int(np.argmax(np.where(cand, s, -np.inf)))
        sim = f @ f[g]
        sim[g] = 1.0
        region = None
        for m in mult:
            region = (sim > 1 - m * d) & ~processed
            if not region.any():
                processed[g] = True
                break
            if (s[region] * a[region]).sum() / a[region].sum() >= tau:
                selected |= region
                break
        processed |= region
        processed[g] = True


def test_refinement_matches_naive_transcription_on_random_scenes():
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        n_inst, per, dim = 30, 40, 16
        centres = _unit(torch.randn(n_inst, dim, generator=g, dtype=torch.float64))
        lab = torch.arange(n_inst).repeat_interleave(per)
        feats = _unit(centres[lab] + 0.08 * torch.randn(n_inst * per, dim, generator=g, dtype=torch.float64))
        inst_rel = torch.rand(n_inst, generator=g, dtype=torch.float64)
        score = rescale((inst_rel[lab] + 0.3 * torch.rand(len(lab), generator=g, dtype=torch.float64)))
        alpha = torch.rand(len(lab), generator=g, dtype=torch.float64)
        d = 0.15 + 0.1 * trial
        want = _naive_refinement(score, feats, alpha, d)
        got = refine_selection(score, feats, alpha, d)
        assert np.array_equal(got.numpy(), want)
        assert 0 < want.sum() < len(want)                   # a non-trivial selection


def test_degenerate_inputs():
    score, feats, alpha, _ = _scene()
    # nothing above tau: empty selection
    assert not refine_selection(score * 0.4, feats, alpha, D).any()
    # d = 0: every threshold is 1 and no similarity exceeds 1 (one-hot features, exact), so
    # every R is empty: each seed is just marked processed, nothing is selected, the loop ends
    onehot = torch.eye(4)[torch.tensor([0, 0, 1, 2, 3])]
    s5, a5 = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.95]), torch.full((5,), 0.9)
    assert not refine_selection(s5, onehot, a5, 0.0).any()
    assert np.array_equal(refine_selection(s5, onehot, a5, 0.5).numpy(), [True, True, True, False, True])
    with pytest.raises(ValueError, match="feats"):
        refine_selection(score, feats[:-1], alpha, D)
    with pytest.raises(ValueError, match="d "):
        refine_selection(score, feats, alpha, float("nan"))


def _leader_clusters_ref(f, a, d, m=0.3, seed_opacity=0.1):
    """docs/method.md §5.4 in plain numpy: leaders by decreasing opacity (stable), greedy balls."""
    f, a = np.asarray(f, dtype=np.float64), np.asarray(a, dtype=np.float64)
    labels = -np.ones(len(f), dtype=int)
    k = 0
    for g in sorted(np.flatnonzero(a > seed_opacity), key=lambda i: (-a[i], i)):
        if labels[g] >= 0:
            continue
        sim = f @ f[g]
        sim[g] = 1.0
        labels[(sim > 1 - m * d) & (labels < 0)] = k
        k += 1
    return labels


def test_instance_clusters_and_the_best_cluster():
    from scene.grounding import best_clusters, cluster_features, instance_clusters

    rng = np.random.default_rng(3)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731  (numpy here)
    centres = unit(rng.normal(size=(4, 8)))                      # four objects in feature space
    who = np.repeat(np.arange(4), [6, 5, 4, 3])
    f = unit(centres[who] + 0.02 * rng.normal(size=(18, 8)))
    a = rng.uniform(0.2, 0.9, 18)
    a[2] = 0.05                                                  # too transparent to lead, still clustered
    d = 0.2
    labels = instance_clusters(torch.tensor(f, dtype=torch.float32), torch.tensor(a, dtype=torch.float32), d)
    ref = _leader_clusters_ref(f, a, d)
    assert np.array_equal(labels.numpy(), ref)
    # the clusters are the objects (each object one cluster, whatever their numbering)
    assert all(len(set(ref[who == o])) == 1 for o in range(4)) and len(set(ref)) == 4
    # language: object o's Gaussians point near text vector t_o, one Gaussian of object 0 is an outlier
    # that points at t_3: by the cluster MEAN, the query t_3 still picks object 3, not that Gaussian's
    texts = unit(rng.normal(size=(5, 16)))
    lang = unit(texts[who] + 0.3 * rng.normal(size=(18, 16)))
    lang[0] = texts[3]
    cf = cluster_features(labels, torch.tensor(lang, dtype=torch.float32))
    want = unit(np.stack([lang[ref == k].sum(0) for k in range(4)]))
    np.testing.assert_allclose(cf.numpy(), want, atol=1e-6)
    pos = torch.tensor(texts[[3, 1]], dtype=torch.float32)
    neg = torch.tensor(texts[4:], dtype=torch.float32)
    sel3, sel1 = best_clusters(labels, torch.tensor(lang, dtype=torch.float32), pos, neg)
    assert np.array_equal(sel3.numpy(), who == 3) and np.array_equal(sel1.numpy(), who == 1)
    # a lone Gaussian far from every object whose vector IS the query wins without a size floor only
    f2, a2 = np.vstack([f, -centres.sum(0) / np.linalg.norm(centres.sum(0))]), np.append(a, 0.9)
    lang2 = np.vstack([lang, texts[1]])
    labels2 = instance_clusters(torch.tensor(f2, dtype=torch.float32), torch.tensor(a2, dtype=torch.float32), d)
    lone = np.arange(19) == 18
    assert (labels2.numpy() == labels2.numpy()[18]).sum() == 1
    args = (labels2, torch.tensor(lang2, dtype=torch.float32), pos[1:], neg)
    assert np.array_equal(best_clusters(*args)[0].numpy(), lone)
    assert np.array_equal(best_clusters(*args, min_size=2)[0].numpy(), np.append(who == 1, False))


def test_connected_regions_keep_a_distant_look_alike_out():
    """An object (20 Gaussians at the origin, relevant) and a distant patch whose instance features are
    the object's (weakly constrained, barely relevant): the paper's rule takes both (the patch is in the
    region and the mean relevancy (20*0.9 + 10*0.3) / 30 = 0.7 passes tau); connected growth does not."""
    from scene.grounding import connected_part, median_neighbour_distance

    rng = np.random.default_rng(5)
    obj = rng.normal(0, 0.05, (20, 3))
    patch = rng.normal(0, 0.05, (10, 3)) + [5.0, 0, 0]
    pos = torch.tensor(np.vstack([obj, patch]), dtype=torch.float32)
    f = torch.nn.functional.normalize(torch.ones(30, 4) + 0.001 * torch.tensor(rng.normal(size=(30, 4))), dim=-1)
    s = torch.tensor([0.9] * 20 + [0.3] * 10)
    a = torch.full((30,), 0.8)
    is_obj = np.arange(30) < 20
    assert refine_selection(s, f, a, D).all()                              # the leak
    nn = median_neighbour_distance(pos)
    assert 0 < nn < 0.1
    got = refine_selection(s, f, a, D, positions=pos, link=3 * nn)
    assert np.array_equal(got.numpy(), is_obj)
    assert refine_selection(s, f, a, D, positions=pos, link=10.0).all()    # a link spanning the gap: as before
    # connected_part itself: a chain 0-1-2 and a far point 3
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [9, 0, 0]])
    m = torch.tensor([True, True, True, True])
    assert connected_part(pts, m, 0, 1.5).tolist() == [True, True, True, False]
    assert connected_part(pts, torch.tensor([True, False, True, True]), 0, 1.5).tolist() == [True, False, False, False]
