"""Stage 2 mathematics (scene/mapping.py): pairs, kernel mapping, 3D smoothing, MLP, cache hash.

Every expected value is computed independently here (numpy loops / dense float64 references)."""
import numpy as np
import pytest
import torch

from scene.mapping import (PairCollector, fit_mlp, inputs_hash, kernel_mapping, mlp_mapping,
                           smooth_knn, MLPMapping)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# PairCollector
# ----------------------------------------------------------------------------------------------
def _pairs_by_hand(views):
    """views: list of (feat [H,W,D], seg [H,W], table [R,C]) numpy -> lists of expected rows + distances."""
    feats, clips, vids, mids, dists = [], [], [], [], []
    for vi, (fm, seg, table) in enumerate(views):
        H, W, _ = fm.shape
        for mid in sorted(set(seg.ravel().tolist()) - {-1}):
            pix = []
            for y in range(H):
                for x in range(W):
                    if seg[y, x] == mid:
                        f = fm[y, x].astype(np.float64)
                        pix.append(f / (np.sqrt((f * f).sum()) + 1e-6))
            anchor = np.mean(pix, axis=0)
            c = table[mid].astype(np.float64)
            feats.append(anchor)
            clips.append(c / (np.sqrt((c * c).sum()) + 1e-6))
            vids.append(vi)
            mids.append(mid)
            dists += [np.sqrt(((p - anchor) ** 2).sum()) for p in pix]
    return np.array(feats), np.array(clips), vids, mids, np.array(dists)


def test_pair_collector_hand_built_two_views():
    # view 0: 2x3 map, D=2; ids 0 and 2 present (id 1 absent -> no pair), one -1 pixel
    f0 = np.array([[[1, 0], [0, 2], [3, 4]],
                   [[-1, 0], [0.5, 0.5], [2, 0]]], np.float32)
    s0 = np.array([[0, 0, 2], [-1, 2, 0]])
    t0 = np.array([[3, 4, 0], [1, 1, 1], [0, 0, 2]], np.float32)   # R=3, C=3
    # view 1: 2x2, ids 1 only plus -1 pixels; its own table
    f1 = np.array([[[0, 1], [1, 1]], [[5, 5], [1, -1]]], np.float32)
    s1 = np.array([[1, -1], [1, 1]])
    t1 = np.array([[1, 0, 0], [0, 6, 8]], np.float32)
    views = [(f0, s0, t0), (f1, s1, t1)]
    feat_e, clip_e, vid_e, mid_e, dist_e = _pairs_by_hand(views)

    pc = PairCollector()
    assert pc.add_view(torch.from_numpy(f0), torch.from_numpy(s0), torch.from_numpy(t0)) == 2
    assert pc.add_view(torch.from_numpy(f1), torch.from_numpy(s1), torch.from_numpy(t1)) == 1
    r = pc.result()
    assert r["feature"].dtype == torch.float32 and r["clip"].dtype == torch.float32
    np.testing.assert_allclose(r["feature"].numpy(), feat_e, atol=1e-6)
    np.testing.assert_allclose(r["clip"].numpy(), clip_e, atol=1e-6)
    assert r["view_index"].tolist() == vid_e == [0, 0, 1]
    assert r["mask_id"].tolist() == mid_e == [0, 2, 1]
    assert r["pixel_count"].tolist() == [3, 2, 3]
    assert len(dist_e) == 8   # the three -1 pixels recorded nothing
    assert abs(r["median_distance"] - np.median(dist_e)) < 1e-5
    # anchors are plain means of unit vectors: NOT renormalised
    assert r["feature"][0].norm() < 0.99


def test_pair_collector_histogram_median_matches_numpy():
    g = np.random.default_rng(0)
    pc = PairCollector()
    all_d = []
    for vi in range(3):
        H, W, D, R = 40, 50, 16, 12
        fm = g.normal(size=(H, W, D)).astype(np.float32)
        fm[:5] += 3.0 * g.normal(size=D).astype(np.float32)   # some structure
        seg = g.integers(-1, R, size=(H, W))
        seg[seg == 5] = -1                                   # id 5 absent from every view
        table = g.normal(size=(R, 8)).astype(np.float32)
        pc.add_view(torch.from_numpy(fm), torch.from_numpy(seg), torch.from_numpy(table), view_index=10 + vi)
        all_d.append(_pairs_by_hand([(fm, seg, table)])[4])
    r = pc.result()
    assert 5 not in r["mask_id"].tolist()
    assert set(r["view_index"].tolist()) == {10, 11, 12}
    assert abs(r["median_distance"] - np.median(np.concatenate(all_d))) < 1e-5


def test_pair_collector_bad_input():
    pc = PairCollector()
    with pytest.raises(ValueError, match="rows"):
        pc.add_view(torch.ones(2, 2, 3), torch.tensor([[0, 4], [1, 1]]), torch.ones(3, 5))
    with pytest.raises(ValueError, match="seg"):
        pc.add_view(torch.ones(2, 2, 3), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 5))
    with pytest.raises(ValueError, match="no pairs"):
        pc.result()


# ----------------------------------------------------------------------------------------------
# kernel mapping
# ----------------------------------------------------------------------------------------------
def _kernel_reference(ins, anc, clip, k, sigma):
    """Dense float64 reference: explicit exp weights normalised per row."""
    f = _unit(ins.astype(np.float64))
    out = []
    for i in range(len(f)):
        d = 1.0 - anc.astype(np.float64) @ f[i]
        nn = np.argsort(d)[:k]
        w = np.exp(-d[nn] ** 2 / (2 * sigma ** 2))
        w = w / w.sum()
        out.append(_unit((w[:, None] * clip[nn].astype(np.float64)).sum(0)))
    return np.array(out)


def _instances(g, n_inst=6, per=40, anchors_per=5, D=16, C=512):
    centres = _unit(g.normal(size=(n_inst, D)))
    clips = _unit(g.normal(size=(n_inst, C)))
    lab = np.repeat(np.arange(n_inst), per)
    ins = (centres[lab] + 0.03 * g.normal(size=(len(lab), D))) * g.uniform(0.5, 2.0, size=(len(lab), 1))
    alab = np.repeat(np.arange(n_inst), anchors_per)
    anc = 0.95 * _unit(centres[alab] + 0.05 * g.normal(size=(len(alab), D)))   # norm < 1, as stored
    aclip = _unit(clips[alab] + 0.005 * g.normal(size=(len(alab), C)))   # per-anchor CLIP noise (norm ~0.11)
    return ins, lab, anc, aclip, clips


def test_kernel_sends_instances_to_their_clip():
    g = np.random.default_rng(1)
    ins, lab, anc, aclip, clips = _instances(g)
    L = kernel_mapping(torch.tensor(ins, dtype=torch.float32), torch.tensor(anc, dtype=torch.float32),
                       torch.tensor(aclip, dtype=torch.float32), chunk_size=17)
    assert L.shape == (len(ins), 512) and L.dtype == torch.float32
    cos = L.numpy() @ clips.T                      # [N, 6]
    own = cos[np.arange(len(lab)), lab]
    assert own.min() > 0.99
    assert (cos.argmax(1) == lab).all()


def test_kernel_matches_dense_reference_and_topk_gt_m():
    g = np.random.default_rng(2)
    ins = g.normal(size=(50, 16))
    anc = 0.8 * _unit(ins[:30] + 0.8 * g.normal(size=(30, 16)))
    clip = g.normal(size=(30, 24))
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    for k, sigma, chunk in [(25, 0.1, 7), (5, 0.3, 1000), (25, 1.0, 50)]:
        ref = _kernel_reference(ins, anc, clip, k, sigma)
        got = kernel_mapping(t(ins), t(anc), t(clip), top_k=k, sigma=sigma, chunk_size=chunk).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # top_k > M: uses all M anchors
    ref = _kernel_reference(ins, anc[:3], clip[:3], 3, 0.5)
    got = kernel_mapping(t(ins), t(anc[:3]), t(clip[:3]), top_k=25, sigma=0.5).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # the row block is also bounded by max_block_elems without changing the result
    got = kernel_mapping(t(ins), t(anc), t(clip), max_block_elems=60).numpy()
    np.testing.assert_allclose(got, _kernel_reference(ins, anc, clip, 25, 0.1), atol=1e-5)


def test_kernel_no_underflow_when_all_distances_large():
    g = np.random.default_rng(3)
    u = _unit(g.normal(size=16))
    ins = _unit(u + 0.05 * g.normal(size=(20, 16)))
    anc = -0.9 * _unit(u + 0.05 * g.normal(size=(10, 16)))   # opposite: every d > 1.5, exp(-d^2/0.02) = 0 in fp32
    assert (1.0 - ins @ anc.T).min() > 1.5
    clip = g.normal(size=(10, 32))
    d = 1.0 - ins @ anc.T
    assert np.exp(-(d.astype(np.float32) ** 2) / np.float32(0.02)).max() == 0.0   # the release's form: 0/0
    got = kernel_mapping(torch.tensor(ins, dtype=torch.float32), torch.tensor(anc, dtype=torch.float32),
                         torch.tensor(clip, dtype=torch.float32)).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # float64 reference (exp(-200) is representable there)
    np.testing.assert_allclose(got, _kernel_reference(ins, anc, clip, 25, 0.1), atol=1e-5)


def test_kernel_bad_input():
    with pytest.raises(ValueError, match="anchors"):
        kernel_mapping(torch.ones(4, 16), torch.ones(0, 16), torch.ones(0, 8))
    with pytest.raises(ValueError, match="dims"):
        kernel_mapping(torch.ones(4, 16), torch.ones(3, 8), torch.ones(3, 8))


# ----------------------------------------------------------------------------------------------
# 3D smoothing
# ----------------------------------------------------------------------------------------------
def test_smooth_knn_matches_brute_force_copy_semantics():
    g = np.random.default_rng(4)
    N, C, k = 300, 8, 10
    xyz = g.normal(size=(N, 3))
    lang = _unit(g.normal(size=(N, C)))
    d2 = ((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1)
    nn = np.argsort(d2, axis=1)[:, :k]
    assert (nn[:, 0] == np.arange(N)).all()            # self included
    ref = _unit(lang[nn].mean(1))
    tx, tl = torch.tensor(xyz, dtype=torch.float32), torch.tensor(lang, dtype=torch.float32)
    keep = tl.clone()
    for chunk in (7, 64, 10_000):
        got = smooth_knn(tx, tl, k=k, chunk_size=chunk)
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    assert torch.equal(tl, keep)                        # input untouched
    # k <= 1: a copy, not an alias
    c = smooth_knn(tx, tl, k=1)
    assert torch.equal(c, tl) and c.data_ptr() != tl.data_ptr()
    # k > N: mean over everything
    got = smooth_knn(tx[:5], tl[:5], k=10)
    np.testing.assert_allclose(got.numpy(), np.tile(_unit(lang[:5].mean(0)), (5, 1)), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# MLP mapping
# ----------------------------------------------------------------------------------------------
def test_mlp_fits_instance_clusters():
    g = np.random.default_rng(5)
    ins, lab, anc, aclip, clips = _instances(g, per=30, anchors_per=20)
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    model = fit_mlp(t(anc), t(aclip), epochs=40, batch_size=32, seed=0)
    assert isinstance(model, MLPMapping)
    L = mlp_mapping(model, t(ins), chunk_size=50).numpy()
    np.testing.assert_allclose(np.linalg.norm(L, axis=1), 1.0, atol=1e-5)
    cos = L @ clips.T
    assert cos[np.arange(len(lab)), lab].min() > 0.9
    assert (cos.argmax(1) == lab).all()
    # deterministic for a seed, and the global RNG is left alone
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    m2 = fit_mlp(t(anc[:40]), t(aclip[:40]), epochs=2, seed=7)
    m3 = fit_mlp(t(anc[:40]), t(aclip[:40]), epochs=2, seed=7)
    assert torch.equal(torch.rand(1), before)
    for p2, p3 in zip(m2.parameters(), m3.parameters()):
        assert torch.equal(p2, p3)


def test_mlp_architecture():
    m = MLPMapping()
    lin = [l for l in m.net if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(16, 32), (32, 64), (64, 128), (128, 256),
                                                              (256, 256), (256, 512)]
    assert sum(isinstance(l, torch.nn.ReLU) for l in m.net) == 5 and isinstance(m.net[-1], torch.nn.Linear)


# ----------------------------------------------------------------------------------------------
# inputs_hash
# ----------------------------------------------------------------------------------------------
def test_inputs_hash():
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    b = torch.ones(5, dtype=torch.int64)
    h = inputs_hash(a, b, "kernel", {"k": 25, "sigma": 0.1})
    assert len(h) == 64
    assert h == inputs_hash(a.clone(), b.clone(), "kernel", {"sigma": 0.1, "k": 25})   # stable
    assert h == inputs_hash(a.T.contiguous().T, b, "kernel", {"k": 25, "sigma": 0.1})  # layout-free
    a2 = a.clone()
    a2[2, 3] = torch.nextafter(a2[2, 3], torch.tensor(100.0))                          # one ulp
    variants = [
        inputs_hash(a2, b, "kernel", {"k": 25, "sigma": 0.1}),
        inputs_hash(a.reshape(4, 3), b, "kernel", {"k": 25, "sigma": 0.1}),             # same bytes, shape
        inputs_hash(a.double(), b, "kernel", {"k": 25, "sigma": 0.1}),                  # dtype
        inputs_hash(a, b, "mlp", {"k": 25, "sigma": 0.1}),
        inputs_hash(a, b, "kernel", {"k": 24, "sigma": 0.1}),
        inputs_hash(b, a, "kernel", {"k": 25, "sigma": 0.1}),                           # order
        inputs_hash(a, b, "ker", "nel", {"k": 25, "sigma": 0.1}),                       # boundaries
    ]
    assert len(set(variants + [h])) == len(variants) + 1
    assert inputs_hash(a.numpy()) == inputs_hash(a.numpy().copy())
    with pytest.raises(ValueError, match="JSON"):
        inputs_hash(object())
