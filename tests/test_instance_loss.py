"""ProtoNCE + norm regulariser (docs/method.md §3.2) against hand computations in plain python."""
import math

import pytest
import torch

from scene.instance_loss import protonce_loss


# ---------------------------------------------------------------------------------------------
# independent reference: plain python lists and math, straight from the formula of docs/method.md §3.2
def _hand_loss(feats, labels, min_cluster_size=0, phi_scale=10.0, phi_min=0.5, phi_max=1.0,
               norm_weight=100.0, loss_scale=1e-3):
    """feats: list of lists (the sampled pixels = all pixels), labels: list of ints."""
    norms = [math.sqrt(sum(x * x for x in f)) for f in feats]
    reg = norm_weight * sum((n - 1.0) ** 2 for n in norms) / len(feats)
    v = [[x / (n + 1e-6) for x in f] for f, n in zip(feats, norms)]
    groups = {}
    for i, l in enumerate(labels):
        groups.setdefault(l, []).append(i)
    groups = {l: ids for l, ids in groups.items() if len(ids) > min_cluster_size}
    if not groups:
        return loss_scale * reg, 0.0, reg, 0
    D = len(feats[0])
    u, phi = {}, {}
    for l, ids in groups.items():
        n = len(ids)
        u[l] = [sum(v[i][k] for i in ids) / n for k in range(D)]
        dist = sum(math.sqrt(sum((v[i][k] - u[l][k]) ** 2 for k in range(D))) for i in ids)
        phi[l] = min(max(phi_scale * dist / (n * math.log(n + 10)), phi_min), phi_max)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    nce = 0.0
    for l, ids in groups.items():
        for i in ids:
            num = math.exp(dot(v[i], u[l]) / phi[l])
            den = sum(math.exp(dot(v[i], u[k]) / phi[k]) for k in groups) + 1e-6
            nce += -math.log(num / den)
    nce /= len(groups)
    return loss_scale * (nce + reg), nce, reg, len(groups)


def _run(feats, labels, **kw):
    F = torch.tensor(feats, dtype=torch.float64)
    S = torch.tensor(labels, dtype=torch.int64)
    return protonce_loss(F, S, sample_idx=torch.arange(len(labels)), **kw)


TWO_CLUSTERS = [[1.0, 0.1, 0.0], [0.9, -0.1, 0.2], [1.2, 0.0, -0.1],
                [0.0, 1.0, 0.3], [0.1, 0.8, -0.2], [-0.2, 1.1, 0.0]]


def test_two_clusters_match_hand_computation():
    labels = [0, 0, 0, 1, 1, 1]
    loss, st = _run(TWO_CLUSTERS, labels, min_cluster_size=0)
    ref, nce, reg, c = _hand_loss(TWO_CLUSTERS, labels)
    assert st["n_clusters"] == c == 2
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    assert st["nce"] == pytest.approx(nce, rel=1e-10)
    assert st["reg"] == pytest.approx(reg, rel=1e-10)
    # φ: these clusters are tight, so 10·φ < 0.5 and the clip at 0.5 is what is used -> loss > 0
    assert st["nce"] > 0.5


def test_phi_in_the_unclipped_range_and_other_constants():
    # a spread cluster gives 10·φ between 0.5 and 1 — exercises the unclipped branch
    feats = [[1.0, 0.0], [0.6, 0.8], [0.8, -0.6], [-1.0, 0.1], [-0.7, -0.7], [-0.6, 0.8]]
    labels = [3, 3, 3, 7, 7, 7]
    kw = dict(phi_scale=3.0, phi_min=0.2, phi_max=2.0, norm_weight=5.0, loss_scale=0.5)
    loss, st = _run(feats, labels, min_cluster_size=0, **kw)
    ref, nce, _, _ = _hand_loss(feats, labels, **kw)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    assert st["nce"] == pytest.approx(nce, rel=1e-10)


def test_unmasked_label_is_its_own_cluster():
    labels = [-1, -1, -1, 4, 4, 4]
    loss, st = _run(TWO_CLUSTERS, labels, min_cluster_size=0)
    assert st["n_clusters"] == 2
    assert loss.item() == pytest.approx(_hand_loss(TWO_CLUSTERS, labels)[0], rel=1e-10)
    # three groups incl. -1: -1 counts like any id
    labels3 = [-1, -1, 2, 2, 5, 5]
    loss3, st3 = _run(TWO_CLUSTERS, labels3, min_cluster_size=0)
    assert st3["n_clusters"] == 3
    assert loss3.item() == pytest.approx(_hand_loss(TWO_CLUSTERS, labels3)[0], rel=1e-10)


def test_small_clusters_are_dropped():
    feats = TWO_CLUSTERS + [[0.3, 0.3, 1.0], [0.2, 0.4, 0.9]]
    labels = [0, 0, 0, 1, 1, 1, 9, 9]          # cluster 9 has 2 samples
    loss, st = _run(feats, labels, min_cluster_size=2)   # needs > 2 -> 9 dropped
    ref, nce, reg, c = _hand_loss(feats, labels, min_cluster_size=2)
    assert st["n_clusters"] == c == 2
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    # the dropped samples take no part in L_NCE (but the regulariser uses all pixels)
    ref_wo = _hand_loss(TWO_CLUSTERS, labels[:6])[1]
    assert st["nce"] == pytest.approx(ref_wo, rel=1e-10)
    # a count equal to the threshold is dropped too (strict >)
    _, st3 = _run(feats, labels, min_cluster_size=3)
    assert st3["n_clusters"] == 0 and st3["nce"] == 0.0


def test_repeated_samples_count_with_multiplicity():
    # sampling is with replacement: a pixel drawn twice counts twice
    F = torch.tensor(TWO_CLUSTERS, dtype=torch.float64)
    S = torch.tensor([0, 0, 0, 1, 1, 1])
    idx = torch.tensor([0, 0, 1, 2, 3, 4, 4, 5])
    loss, st = protonce_loss(F, S, sample_idx=idx, min_cluster_size=0)
    fs = [TWO_CLUSTERS[i] for i in idx.tolist()]
    ls = [S[i].item() for i in idx.tolist()]
    _, nce, _, _ = _hand_loss(fs, ls)
    assert st["nce"] == pytest.approx(nce, rel=1e-10)


def _hand_loss_sampled(pixels, labels, idx, **kw):
    """The loss of docs/method.md §3.2 for one view: the regulariser over ALL pixels, L_NCE over the samples ``idx``
    (with multiplicity). Plain python, from the formula (not from the implementation)."""
    p = {k: kw.pop(k) for k in ("norm_weight", "loss_scale") if k in kw}
    norm_weight, loss_scale = p.get("norm_weight", 100.0), p.get("loss_scale", 1e-3)
    reg = norm_weight * sum((math.sqrt(sum(x * x for x in f)) - 1.0) ** 2 for f in pixels) / len(pixels)
    _, nce, _, c = _hand_loss([pixels[i] for i in idx], [labels[i] for i in idx], **kw)
    return loss_scale * (nce + reg), nce, reg, c


def test_orthogonal_point_clusters_have_a_closed_form_value():
    # two clusters of identical vectors r*e1 (3 pixels) and r*e2 (3 pixels): v = e/(1 + 1e-6/r)
    # (the pixel normalisation's epsilon), u = v exactly, every distance to the prototype is 0 ->
    # phi = clip(0, 0.5, 1) = 0.5; logits |v|^2/0.5 (own) and 0 (other); reg = 100 (r - 1)^2.
    # Per sample: -log(e^a / (e^a + e^0 + 1e-6)), summed over the 6 samples and divided by C = 2.
    labels = [5, 5, 5, 8, 8, 8]
    for r, value in ((1.0, 0.38078582117), (2.0, 0.38078510596)):
        feats = [[r, 0.0, 0.0]] * 3 + [[0.0, r, 0.0]] * 3
        a = (1.0 / (1.0 + 1e-6 / r)) ** 2 / 0.5
        nce = 6 * -math.log(math.exp(a) / (math.exp(a) + 1.0 + 1e-6)) / 2
        loss, st = _run(feats, labels, min_cluster_size=0)
        assert st["n_clusters"] == 2
        assert st["reg"] == pytest.approx(100.0 * (r - 1) ** 2, abs=1e-12)
        assert st["nce"] == pytest.approx(nce, rel=1e-10)
        assert st["nce"] == pytest.approx(value, rel=1e-9)    # the number itself (3 ln(1 + e^-2) ~ 0.38078)
        assert loss.item() == pytest.approx(1e-3 * (nce + 100.0 * (r - 1) ** 2), rel=1e-10)


def test_random_draw_matches_the_dense_formula_on_that_draw():
    """The generator's draw is ``torch.randint(0, P, (B,))`` (uniform, with replacement, documented):
    the loss on it equals the plain-python formula on those samples, regulariser over all pixels."""
    g = torch.Generator().manual_seed(3)
    F = torch.randn(50, 4, generator=g, dtype=torch.float64)
    S = torch.randint(-1, 3, (50,), generator=g)
    kw = dict(min_cluster_size=5, phi_scale=4.0, phi_min=0.3, phi_max=0.9, norm_weight=2.0, loss_scale=0.1)
    loss, st = protonce_loss(F, S, num_samples=200, generator=torch.Generator().manual_seed(7), **kw)
    idx = torch.randint(0, 50, (200,), generator=torch.Generator().manual_seed(7)).tolist()
    assert len(set(idx)) < len(idx)                              # 200 draws of 50 pixels: repeats
    ref, nce, reg, c = _hand_loss_sampled(F.tolist(), S.tolist(), idx, **kw)
    assert st["n_clusters"] == c == 4                            # ids -1, 0, 1, 2, each > 5 samples
    assert st["reg"] == pytest.approx(reg, rel=1e-10)
    assert st["nce"] == pytest.approx(nce, rel=1e-10)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    # another draw is another loss: the draw is really used (and the formula still matches it)
    loss2, st2 = protonce_loss(F, S, num_samples=200, generator=torch.Generator().manual_seed(8), **kw)
    idx2 = torch.randint(0, 50, (200,), generator=torch.Generator().manual_seed(8)).tolist()
    assert abs(st2["nce"] - st["nce"]) > 1e-3
    assert loss2.item() == pytest.approx(_hand_loss_sampled(F.tolist(), S.tolist(), idx2, **kw)[0], rel=1e-10)


def _mean_loss(F, S):
    return protonce_loss(F, S, sample_idx=torch.arange(F.shape[0]), min_cluster_size=0)[1]["nce"]


def test_separated_clusters_give_lower_but_nonzero_loss():
    g = torch.Generator().manual_seed(0)
    C, n, D = 4, 30, 16
    S = torch.arange(C).repeat_interleave(n)
    protos = torch.eye(D)[:C]
    sep = protos[S] + 0.01 * torch.randn(C * n, D, generator=g)
    shared = protos[0].expand(C * n, D) + 0.01 * torch.randn(C * n, D, generator=g)
    rand = torch.randn(C * n, D, generator=g)
    l_sep, l_shared, l_rand = _mean_loss(sep, S), _mean_loss(shared, S), _mean_loss(rand, S)
    assert l_sep < l_rand and l_sep < l_shared
    # φ >= 0.5 bounds |logit| <= 2: with orthogonal unit prototypes the per-sample term is
    # log(e^2 + (C-1) e^0) - 2 ≈ 0.344, times n samples per cluster -> far from 0
    expected = n * (math.log(math.exp(2) + (C - 1)) - 2)
    assert l_sep == pytest.approx(expected, rel=0.05)
    # shared features: all prototypes equal -> every term is log(C)
    assert l_shared == pytest.approx(n * math.log(C), rel=0.02)


def _step_cosines(F0, S, lr=1e-2):
    """cos of each pixel to its own / the other prototype (of the unstepped features), before
    and after a small step along -grad (norm regulariser off: it does not change directions)."""
    F = F0.clone().requires_grad_(True)
    loss, _ = protonce_loss(F, S, sample_idx=torch.arange(len(S)), min_cluster_size=0, norm_weight=0.0)
    loss.backward()
    v0 = F0 / F0.norm(dim=1, keepdim=True)
    u = torch.stack([v0[S == c].mean(0) for c in range(int(S.max()) + 1)])   # [C,D] prototypes
    step = F0 - lr / loss.item() * F.grad
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=-1)  # noqa: E731
    loss_after, _ = protonce_loss(step, S, sample_idx=torch.arange(len(S)), min_cluster_size=0, norm_weight=0.0)
    return cos(F0, u[S]), cos(step, u[S]), cos(F0, u[1 - S]), cos(step, u[1 - S]), loss, loss_after


def test_gradient_pulls_pixel_towards_its_prototype():
    # pixels 2 and 5 lean towards the other cluster: the gradient must pull them back to their
    # own prototype and away from the other one
    F0 = torch.tensor([[1, 0, 0.3], [1, 0, -0.3], [1, 0.5, 0],
                       [0, 1, 0.3], [0, 1, -0.3], [0.5, 1, 0]], dtype=torch.float64)
    S = torch.tensor([0, 0, 0, 1, 1, 1])
    own0, own1, oth0, oth1, l0, l1 = _step_cosines(F0, S)
    for p in (2, 5):
        assert own1[p] > own0[p] + 1e-4
        assert oth1[p] < oth0[p] - 1e-4
    assert l1 < l0
    # random clustered data: on average pixels move towards their own prototype. (Not every pixel:
    # InfoNCE also repels from the other prototypes, which for a pixel already lying beyond its
    # own prototype is not the direction of u; and u itself moves.)
    g = torch.Generator().manual_seed(0)
    S = torch.tensor([0] * 8 + [1] * 8)
    F0 = torch.eye(4, dtype=torch.float64)[S] + 0.5 * torch.randn(16, 4, generator=g, dtype=torch.float64)
    own0, own1, oth0, oth1, l0, l1 = _step_cosines(F0, S)
    assert (own1 - own0).mean() > 0 and (oth1 - oth0).mean() < 0
    assert (own1 > own0).sum() >= 12
    assert l1 < l0


def test_norm_regulariser_alone():
    F = torch.zeros(12, 16)
    F[:, 3] = 2.0                                                # every pixel has norm 2
    S = torch.zeros(12, dtype=torch.long)
    loss, st = protonce_loss(F, S, sample_idx=torch.arange(12), min_cluster_size=100)
    assert st == {"nce": 0.0, "reg": pytest.approx(100.0), "n_clusters": 0}
    assert loss.item() == pytest.approx(1e-3 * 100.0)
    # unit-norm pixels give zero regulariser
    _, st1 = protonce_loss(F / 2, S, sample_idx=torch.arange(12), min_cluster_size=100)
    assert st1["reg"] == pytest.approx(0.0, abs=1e-10)


def test_bad_inputs_give_value_errors():
    with pytest.raises(ValueError, match="features"):
        protonce_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="seg"):
        protonce_loss(torch.zeros(4, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        protonce_loss(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="out of range"):
        protonce_loss(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), sample_idx=torch.tensor([4]))
