"""The factored kernel field (scene/language_field.py, docs/method.md §4.5) against the dense one.

Random inputs: the relevancy through the structure equals the relevancy of the dense field computed
the release's way (kernel_mapping + smooth_knn, float32, N x 512) within 1e-5, plain and with the
query contrast, with and without smoothing; its dense rows, cluster means and subsets agree too.
A trained generated scene: every labelled query selects the same Gaussians, bit for bit, through the
factored field and through its dense twin, in every query mode."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from scene.grounding import cluster_features, relevancy
from scene.language_field import DenseField, KernelField, factor_kernel_field, from_state, to_state
from scene.mapping import anchor_topk, kernel_mapping, knn_indices, smooth_knn


def random_case(n=4000, m=300, d=16, c=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(40, d, generator=g), dim=-1)
    label = torch.randint(0, 40, (n,), generator=g)
    feat = centres[label] + 0.05 * torch.randn(n, d, generator=g)         # clustered, as a trained field
    anchors = 0.9 * centres[torch.randint(0, 40, (m,), generator=g)] + 0.02 * torch.randn(m, d, generator=g)
    clip = F.normalize(torch.randn(m, c, generator=g), dim=-1)
    xyz = torch.randn(n, 3, generator=g)
    text = F.normalize(torch.randn(6, c, generator=g), dim=-1)
    return feat, anchors, clip, xyz, text


def both(feat, anchors, clip, xyz, top_k=25, sigma=0.1, smooth_k=10, spatial=True):
    dense = kernel_mapping(feat, anchors, clip, top_k=top_k, sigma=sigma)
    if smooth_k > 1:
        dense = smooth_knn(xyz, dense, k=smooth_k)
    nbr = knn_indices(xyz, smooth_k) if smooth_k > 1 else None
    field = factor_kernel_field(feat, anchors, clip, top_k, sigma, nbr, xyz=xyz if spatial else None)
    return DenseField(dense), field


@pytest.mark.parametrize("smooth_k, spatial", [(10, True), (10, False), (1, True)])
def test_relevancy_through_the_structure_equals_the_dense_one(smooth_k, spatial):
    feat, anchors, clip, xyz, text = random_case()
    dense, field = both(feat, anchors, clip, xyz, smooth_k=smooth_k, spatial=spatial)
    assert isinstance(field, KernelField) and (field.nbr is None) == (smooth_k == 1)
    assert (field.perm is not None) == (spatial and smooth_k > 1)
    if field.perm is not None:  # rows really are reordered (the test exercises the reordering)
        assert not torch.equal(field.perm.long(), torch.arange(feat.shape[0]))
    pos, neg = text[:2], text[2:]
    for contrast in (False, True):
        a = relevancy(dense.values, pos, neg, contrast=contrast)
        b = relevancy(field, pos, neg, contrast=contrast)
        assert a.shape == b.shape == (2, feat.shape[0])
        assert (a - b).abs().max().item() < 1e-5
        assert a.std() > 0.01  # not a constant field: the comparison can fail
    assert (field.dense() - dense.values).abs().max().item() < 1e-5
    assert (field.dots(text) - dense.values @ text.T).abs().max().item() < 1e-5


def test_rows_cluster_means_and_subsets_agree():
    feat, anchors, clip, xyz, text = random_case(seed=1)
    dense, field = both(feat, anchors, clip, xyz)
    labels = torch.randint(-1, 30, (feat.shape[0],), generator=torch.Generator().manual_seed(2))
    assert (cluster_features(labels, field, chunk_size=777) - cluster_features(labels, dense.values)).abs().max() < 1e-5
    keep = torch.nonzero(labels % 3 == 0).squeeze(1)
    sub = field.subset(keep)
    assert sub.shape == (keep.shape[0], 512)
    assert (sub.dots(text) - dense.values[keep] @ text.T).abs().max() < 1e-5
    assert (sub.subset(torch.arange(5)).dense() - dense.values[keep[:5]]).abs().max() < 1e-5
    idx = torch.tensor([0, 17, 3999])
    assert (field.rows(idx) - dense.values[idx]).abs().max() < 1e-5


def test_state_round_trip_is_exact_and_small():
    feat, anchors, clip, xyz, text = random_case(n=2000, seed=3)
    _, field = both(feat, anchors, clip, xyz)
    state = to_state(field)
    back = from_state(state)
    assert torch.equal(back.dots(text), field.dots(text))
    stored = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    dense_half = feat.shape[0] * 512 * 2
    assert stored < dense_half  # 25 + 10 indices and 25 weights per Gaussian instead of 512 half floats


def test_every_query_selects_the_same_gaussians_as_the_dense_field(tmp_path):
    """Preset default (noisy masks and CLIP rows, as real data): a preset without CLIP noise gives every
    Gaussian of an object exactly the same language vector, so its seeds are exact ties that float
    rounding breaks differently in any two computations."""
    import query as query_cli
    from arguments import apply_overrides, read_saved_config
    from preprocess.synthetic import generate_scene
    from scene.encoders import TableTextEncoder
    from scene_factory import TINY_SCENE, TINY_SCHEDULE
    from stages.query import load_query_model, select_from_vectors
    from train import main as train_main

    generate_scene(tmp_path / "data", "noisy", seed=0, preset="default", overrides=TINY_SCENE, progress=False)
    run = tmp_path / "out" / "noisy"
    for stage in ("rgb", "instance", "mapping"):
        assert train_main(["--stage", stage, "-s", str(tmp_path / "data" / "noisy"), "-m", str(run),
                           *TINY_SCHEDULE]) == 0
    cats = json.loads((tmp_path / "data" / "noisy" / "queries.json").read_text())["queries"]
    cfg, _ = read_saved_config(run / "config.yaml")
    qm = load_query_model(cfg, run, torch.device("cpu"))
    assert isinstance(qm.lang, KernelField)
    twin = dataclasses.replace(qm, lang=DenseField(qm.lang.dense()), cache={})
    enc = TableTextEncoder(tmp_path / "data" / "noisy" / "text_features.json")
    pos, neg = enc.encode(cats), enc.encode(list(cfg.query.negatives))
    n_selected = 0
    for mode in ("collaborative", "language_only", "instance_only", "instance_seed"):
        c = apply_overrides(cfg, [f"query.mode={mode}"])
        a = select_from_vectors(c, qm, pos, neg, return_scores=True)
        b = select_from_vectors(c, twin, pos, neg, return_scores=True)
        for cat, (sa, _, ra), (sb, _, rb) in zip(cats, a, b):
            assert torch.equal(sa, sb), (mode, cat, int((sa != sb).sum()), int(sa.sum()))
            assert (ra - rb).abs().max() < 1e-5
            n_selected += int(sa.sum())
    assert n_selected > 0
    assert query_cli.main(["-m", str(run)]) == 0  # the stage itself answers from the factored field


@pytest.mark.parametrize("spread", [0.02, 0.3])
def test_pruned_anchor_topk_is_the_brute_force_one(spread):
    """Tight groups (most anchors pruned) and loose ones (the bound prunes little): the same top k."""
    from scene.mapping import _topk_blocks

    g = torch.Generator().manual_seed(4)
    centres = F.normalize(torch.randn(50, 16, generator=g), dim=-1)
    f = F.normalize(centres[torch.randint(0, 50, (20000,), generator=g)] + spread * torch.randn(20000, 16, generator=g), dim=-1)
    anchors = 0.9 * centres[torch.randint(0, 50, (3000,), generator=g)] + 0.05 * torch.randn(3000, 16, generator=g)
    s1, i1 = _topk_blocks(f, anchors, 25, 1 << 26)
    s2, i2 = anchor_topk(f, anchors, 25, max_block_elems=1 << 20, groups=256)   # small blocks: pruning runs
    assert (s1 - s2).abs().max() < 1e-6
    # the anchors chosen score the top k scores (rows may only differ by anchors tied to rounding)
    chosen = (f[:, None, :] * anchors[i2]).sum(-1).sort(dim=1, descending=True).values
    assert (chosen - s1).abs().max() < 1e-5
    assert (i1.sort(dim=1).values == i2.sort(dim=1).values).all(dim=1).float().mean() > 0.999


def loop_dots(clip, idx, weight, nbr, scale, perm, vectors):
    """[N, Q] in Gaussian order by plain loops over the stored structure (the reference of the sums)."""
    per_anchor = (clip.double() @ vectors.double().T).tolist()
    n, q = idx.shape[0], vectors.shape[0]
    raw = [[sum(float(weight[r, k]) * per_anchor[int(idx[r, k])][j] for k in range(idx.shape[1]))
            for j in range(q)] for r in range(n)]
    if nbr is not None:
        raw = [[float(scale[r]) * sum(raw[int(nbr[r, k])][j] for k in range(nbr.shape[1])) for j in range(q)]
               for r in range(n)]
    out = torch.empty(n, q, dtype=torch.float64)
    rows = perm.long() if perm is not None else torch.arange(n)
    out[rows] = torch.tensor(raw, dtype=torch.float64)
    return out


@pytest.mark.parametrize("n_vectors", [1, 5, 9, 17, 40])   # table widths 8, 8, 16, 32, two blocks of 32
@pytest.mark.parametrize("smooth_k, spatial", [(6, True), (6, False), (1, False)])
def test_cpp_sums_equal_a_loop_over_the_structure(n_vectors, smooth_k, spatial):
    from scene.language_field import _SUMS

    if not _SUMS.available():
        pytest.skip(f"C++ field sums unavailable: {_SUMS.unavailable_reason()}")
    feat, anchors, clip, xyz, _ = random_case(n=203, m=40, c=64, seed=5)  # 203: rows not a multiple of 4
    text = F.normalize(torch.randn(n_vectors, 64, generator=torch.Generator().manual_seed(6)), dim=-1)
    _, field = both(feat, anchors, clip, xyz, top_k=7, smooth_k=smooth_k, spatial=spatial)
    ref = loop_dots(field.anchor_clip, field.idx, field.weight, field.nbr, field.scale, field.perm, text)
    assert ref.std() > 0.01
    for backend in ("cpp", "torch"):
        got = field.dots(text, backend=backend)
        assert got.shape == (203, n_vectors) and got.dtype == torch.float32
        assert (got.double() - ref).abs().max() < 1e-5, backend
        rows = field.row_dots(text, backend=backend)           # row order: row r is Gaussian perm[r]
        order = field.perm.long() if field.perm is not None else torch.arange(203)
        assert (rows.double() - ref[order]).abs().max() < 1e-5, backend
    # the same sums in the same order as embedding_bag: equal to the last rounding
    assert (field.dots(text, backend="cpp") - field.dots(text, backend="torch")).abs().max() < 1e-6


def test_kernel_field_rejects_indices_outside_its_tables():
    feat, anchors, clip, xyz, _ = random_case(n=300, m=30, c=32, seed=7)
    _, field = both(feat, anchors, clip, xyz, top_k=5, smooth_k=4)
    st = field.state()
    for name, bad in (("idx", st["idx"].clone().fill_(30)), ("nbr", st["nbr"].clone().fill_(-1)),
                      ("perm", st["perm"].clone().fill_(3))):
        with pytest.raises(ValueError, match=name):
            KernelField(**{**st, name: bad})
    with pytest.raises(ValueError, match="backend"):
        field.dots(clip[:2], backend="cuda")
