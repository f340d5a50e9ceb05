"""The synthetic generator's failure-mode knobs of real per-mask CLIP features (crop context, part
semantics, look-alike confusion, shared name words, drifting surfaces): each does what its rule
says, off (0) leaves the default scenes byte for byte as before, out-of-range values are refused.

Views are rendered once per scene and ``build_language_features`` is called directly with the
``clean`` knobs, vectors in text space (``image_text_cos`` 1) and no CLIP noise, so each row is
the knob's rule applied to the mask's exact text-side vector."""
import hashlib
from dataclasses import replace

import numpy as np
import pytest

from preprocess.synthetic import build_scene, generate_scene, make_config
from preprocess.synthetic.config import LATER_NOISE_KNOBS
from preprocess.synthetic.layout import COLORS, VOCAB, choose_objects
from preprocess.synthetic.masks import VectorBank, build_language_features, look_alikes
from preprocess.synthetic.render import render_view
from scene.encoders import HashTextEncoder, tokenize

LEVEL_S, LEVEL_L = 1, 3
TINY = {"n_views": 3, "width": 48, "height": 36, "n_points": 300, "n_labelled": 2}
# sha256 over (name, bytes) of the sorted language_features/*.npy of generate_scene(root, "default7", 7,
# "default", TINY), recorded with the generator before these knobs existed
DEFAULT7_FEATURES = "9f8bd1ec4491dfea773cfd2ccae5addab2848ccea2c8c883bbd523709f337dec"


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def cos(a, b):
    return float(unit(a) @ unit(b))


class Views:
    """A scene's layout, bank and rendered views; ``rows(**knobs)`` -> per view (s, f)."""

    def __init__(self, seed, n_views=4, shared_names=0.0):
        self.cfg = make_config("clean", {"n_views": n_views, "width": 64, "height": 48,
                                         "n_labelled": 1, "noise.shared_names": shared_names})
        self.seed = seed
        self.layout, cams = build_scene(seed, self.cfg)
        self.bank = VectorBank.build(self.layout, HashTextEncoder(dim=self.cfg.text_dim))
        self.views = [render_view(self.layout, c, 1, False) for c in cams]
        self.min_area = 4

    def knobs(self, **kw):
        return replace(self.cfg.noise, image_text_cos=1.0, **kw)

    def rows(self, **kw):
        k = self.knobs(**kw)
        return [build_language_features(v, self.layout, self.bank, k, self.seed, i, self.min_area)
                for i, v in enumerate(self.views)]


@pytest.fixture(scope="module")
def views():
    return Views(seed=21)


def _row_at(s, f, level, pix):
    ids = np.unique(s[level][pix])
    assert len(ids) == 1 and ids[0] >= 0, ids
    return f[int(ids[0])].astype(np.float64)


# ---- off = as before --------------------------------------------------------------------------
def test_knobs_off_default_scene_bytes_unchanged(tmp_path):
    d = generate_scene(tmp_path, "default7", 7, "default", TINY, progress=False, log=lambda *a: None)
    h = hashlib.sha256()
    files = sorted((d / "language_features").glob("*.npy"))
    assert len(files) == 2 * TINY["n_views"]
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    assert h.hexdigest() == DEFAULT7_FEATURES


def test_knobs_off_left_out_of_identity_and_recorded_when_on():
    noise = make_config("default").to_dict()["noise"]
    assert not set(LATER_NOISE_KNOBS) & set(noise)
    for k in LATER_NOISE_KNOBS:
        assert make_config("default", {f"noise.{k}": 0.2}).to_dict()["noise"][k] == 0.2
    hard = make_config("hard").noise
    assert all(0 < getattr(hard, k) < 1 for k in LATER_NOISE_KNOBS)


@pytest.mark.parametrize("knob", LATER_NOISE_KNOBS)
@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.3"])
def test_validate_refuses_out_of_range(knob, bad):
    with pytest.raises(ValueError, match=f"noise knob {knob} is a probability in \\[0, 1\\]"):
        make_config("default", {f"noise.{knob}": bad})


def test_validate_refuses_part_masks_without_semantics():
    with pytest.raises(ValueError, match="part_name_drop=1 with part_weight=0"):
        make_config("default", {"noise.part_name_drop": 1.0, "noise.part_weight": 0.0})
    make_config("default", {"noise.part_name_drop": 1.0})   # the part word remains


def test_hard_scene_generates(tmp_path):
    d = generate_scene(tmp_path, "h", 7, "hard", TINY, progress=False, log=lambda *a: None)
    for p in (d / "language_features").glob("*_f.npy"):
        f = np.load(p)
        assert np.isfinite(f).all() and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)


# ---- crop context ---------------------------------------------------------------------------
def _crop_expectation(view, o, bank, a):
    """The test's own crop rule for object o's whole mask: (expected vector, {object k: share})."""
    pix = view.obj == o
    ys, xs = np.nonzero(pix)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    out, ob, rg = ~pix[box], view.obj[box], view.region[box]
    n = out.size
    share = {int(k): np.count_nonzero(out & (ob == k)) / n for k in np.unique(ob[out]) if k >= 0}
    mix = sum((c * bank.obj[k] for k, c in share.items()), np.zeros_like(bank.generic))
    for r, rv in bank.region.items():
        mix = mix + np.count_nonzero(out & (ob < 0) & (rg == r)) / n * rv
    f_out = np.count_nonzero(out) / n
    ctx = unit(mix) if f_out > 0 else None
    return unit((1 - a * f_out) * bank.obj[o] + a * mix), ctx, share


def test_crop_context_mixes_in_what_the_box_covers(views):
    strengths = (0.0, 0.25, 0.5, 1.0)
    runs = {a: views.rows(crop_context=a) for a in strengths}
    toward_context, gains = 0, []
    for vi, view in enumerate(views.views):
        for o in np.unique(view.obj[view.obj >= 0]):
            if np.count_nonzero(view.obj == o) < views.min_area:
                continue
            got = {a: _row_at(*runs[a][vi], LEVEL_L, view.obj == o) for a in strengths}
            for a in strengths:
                want, _, _ = _crop_expectation(view, o, views.bank, a)
                assert np.allclose(got[a], want, atol=1e-5)
            _, ctx, share = _crop_expectation(view, o, views.bank, 1.0)
            if ctx is None:       # the mask fills its box: nothing to leak in
                assert all(np.allclose(got[a], views.bank.obj[o], atol=1e-6) for a in strengths)
                continue
            c = [cos(got[a], ctx) for a in strengths]
            assert all(x < y + 1e-6 for x, y in zip(c, c[1:])), (c, o, share)       # towards the box's context
            toward_context += c[-1] > c[0] + 1e-3
            for k, sh in share.items():
                if k != o:
                    n = [cos(got[a], views.bank.obj[k]) for a in strengths]
                    if sh >= 0.1:      # a neighbour covering a tenth of the box pulls monotonically
                        assert all(x < y + 1e-6 for x, y in zip(n, n[1:])), (sh, n)
                    gains.append((sh, n[-1] - n[0]))
    assert toward_context >= 10
    gains.sort()
    lo, hi = gains[: len(gains) // 2], gains[len(gains) // 2:]
    assert len(gains) >= 6
    assert np.mean([g for _, g in hi]) > np.mean([g for _, g in lo])   # more neighbour, more pull


# ---- parts ------------------------------------------------------------------------------------
def test_part_name_drop_lowers_the_object_name_share(views):
    drops = (0.0, 0.3, 0.6, 0.9)
    runs = {d: views.rows(part_name_drop=d) for d in drops}
    lay, bank, w = views.layout, views.bank, views.cfg.noise.part_weight
    n_parts = n_halves = 0
    for vi, view in enumerate(views.views):
        for o, obj in enumerate(lay.objects):
            if len(obj.part_ids) < 2:
                pix = (view.obj == o) & view.upper          # a half keeps the whole name
                if np.count_nonzero(pix) >= views.min_area and np.count_nonzero(view.obj == o) >= views.min_area:
                    r = [_row_at(*runs[d][vi], LEVEL_S, pix) for d in drops]
                    assert all(np.allclose(x, r[0], atol=1e-6) for x in r)
                    n_halves += 1
                continue
            if np.count_nonzero(view.obj == o) < views.min_area:
                continue
            for p in obj.part_ids:
                pix = view.part == p
                if np.count_nonzero(pix) < views.min_area:
                    continue
                part = bank.word[lay.part_words[p]]
                r = [_row_at(*runs[d][vi], LEVEL_S, pix) for d in drops]
                for d, x in zip(drops, r):
                    assert np.allclose(x, unit((1 - d) * bank.obj[o] + w * part), atol=1e-5)
                c = [cos(x, bank.obj[o]) for x in r]
                assert all(x > y for x, y in zip(c, c[1:])), c
                assert cos(r[-1], part) > cos(r[0], part)
                n_parts += 1
    assert n_parts >= 10 and n_halves >= 1


# ---- look-alike confusion --------------------------------------------------------------------
def _look_alikes(layout):
    objs = layout.objects
    for ob in objs:   # the metadata the rule reads: the name's colour word, a kind of its own parts
        first = ob.name.split()[0]
        assert ob.color in COLORS and (first not in COLORS or first == ob.color)
        assert ob.shape in {p.kind for p in ob.parts}
    def alike(a, b):
        return a.color == b.color or (a.shape == b.shape and
                                      max(a.footprint, b.footprint) <= 1.5 * min(a.footprint, b.footprint))

    return [{k for k, b in enumerate(objs) if k != o and alike(a, b)} for o, a in enumerate(objs)]


def test_similar_confusion_swaps_to_look_alikes_at_the_set_rate():
    p = 0.3
    n_masks = n_swapped = 0
    swapped, present, targets = {}, {}, {}
    for seed in (31, 32):
        v = Views(seed, n_views=5)
        alike = _look_alikes(v.layout)
        assert [set(x) for x in look_alikes(v.layout)] == alike
        off, on = v.rows(), v.rows(similar_confusion=p)
        for vi, ((s0, f0), (s1, f1)) in enumerate(zip(off, on)):
            assert np.array_equal(s0, s1) and f0.shape == f1.shape
            view = v.views[vi]
            for level in range(4):
                for m in np.unique(s0[level][s0[level] >= 0]).astype(int):
                    owner = view.obj[s0[level] == m]
                    if (owner < 0).all():
                        assert np.allclose(f0[m], f1[m])     # background masks are left alone
                        continue
                    o = int(np.bincount(owner[owner >= 0]).argmax())
                    if not alike[o]:
                        assert np.allclose(f0[m], f1[m])
                        continue
                    n_masks += 1
                    if level == LEVEL_L:     # one whole-object mask per object and view (clean)
                        present.setdefault((seed, o), set()).add(vi)
                    if np.allclose(f0[m], f1[m], atol=1e-6):
                        continue
                    n_swapped += 1
                    best = max(range(len(v.layout.objects)), key=lambda k: cos(f1[m], v.bank.obj[k]))
                    assert np.allclose(f1[m], v.bank.obj[best], atol=1e-5) and best in alike[o]
                    if level == LEVEL_L:
                        swapped.setdefault((seed, o), set()).add(vi)
                    targets.setdefault((seed, o), set()).add(best)
    tol = 4 * np.sqrt(p * (1 - p) / n_masks)
    assert n_masks >= 150 and abs(n_swapped / n_masks - p) < tol, (n_swapped, n_masks)
    # view-dependent: some mask is swapped in one view and kept in another that shows it
    assert any(swapped[k] != present[k] for k in swapped)
    assert any(len(t) > 1 for t in targets.values())   # drawn among the look-alikes, not one fixed


# ---- shared name words -----------------------------------------------------------------------
def test_shared_names_rate():
    entries = [pat.format(c) if "{}" in pat else pat for pat, cols, _ in VOCAB for c in cols]
    words = {e: set(tokenize(e)) for e in entries}
    rates, exact = [], []
    for p in (0.3, 0.8, 1.0):
        got = exp = var = 0.0
        for s in range(150):
            names = [n for n, _, _ in choose_objects(None, 10, p, np.random.default_rng([s, 9]))]
            assert len(set(names)) == 10
            for i in range(1, 10):
                seen = set().union(*(words[n] for n in names[:i]))
                left = [e for e in entries if e not in names[:i]]
                q = sum(bool(words[e] & seen) for e in left) / len(left)
                pi = p + (1 - p) * q if q > 0 else 0.0
                exp, var = exp + pi, var + pi * (1 - pi)
                got += bool(words[names[i]] & seen)
        assert abs(got - exp) <= 4 * np.sqrt(var) + 1e-9, (p, got, exp)
        rates.append(got / (150 * 9))
        exact.append(got == exp)
    assert rates[0] < rates[1] < rates[2] and exact[2]   # p = 1: every pick shares while one can


def test_shared_word_mix_pulls_towards_the_shared_words():
    v = Views(seed=41, n_views=3, shared_names=1.0)
    bank = v.bank
    toks = [set(tokenize(o.name)) for o in v.layout.objects]
    mixes = (0.0, 0.3, 0.6)
    runs = {b: v.rows(shared_word_mix=b) for b in mixes}
    checked = 0
    for o, t in enumerate(toks):
        shared = sorted(w for w in t if any(w in u for j, u in enumerate(toks) if j != o))
        if not shared:
            for b in mixes:
                assert np.allclose(bank.seen_names(b)[o], bank.obj[o])
            continue
        target = unit(HashTextEncoder(dim=v.cfg.text_dim).encode_numpy(shared).sum(0))
        for vi, view in enumerate(v.views):
            pix = view.obj == o
            if np.count_nonzero(pix) < v.min_area:
                continue
            c = [cos(_row_at(*runs[b][vi], LEVEL_L, pix), target) for b in mixes]
            assert c[0] < c[1] < c[2], c
            checked += 1
    assert checked >= 5
    # "red apple" / "green apple": the vectors of names sharing a word move closer together
    pairs = [(a, b) for a in range(len(toks)) for b in range(a + 1, len(toks)) if toks[a] & toks[b]]
    assert pairs
    for a, b in pairs:
        c = [cos(bank.seen_names(m)[a], bank.seen_names(m)[b]) for m in mixes]
        assert c[0] < c[1] < c[2]


# ---- large surfaces ------------------------------------------------------------------------
def test_surface_drift_moves_surfaces_towards_generic_phrases(views):
    drifts = (0.0, 0.2, 0.5, 0.8)
    runs = {s: views.rows(surface_drift=s) for s in drifts}
    bank = views.bank
    names_mean = unit(bank.obj.mean(0))
    checked = set()
    for vi, view in enumerate(views.views):
        for reg, name in ((1, "table"), (2, "floor"), (3, "wall"), (4, "sky")):
            pix = (view.obj < 0) & (view.region == reg)
            if np.count_nonzero(pix) < 50:
                continue
            for level in range(4):
                r = [_row_at(*runs[s][vi], level, pix) for s in drifts]
                if name == "sky":
                    assert all(np.allclose(x, bank.region[4]) for x in r)
                    continue
                for ref in (bank.generic, names_mean):
                    c = [cos(x, ref) for x in r]
                    assert all(x < y for x, y in zip(c, c[1:])), (name, c)
                assert np.allclose(r[0], bank.region[reg])
                checked.add(name)
    assert {"table", "floor"} <= checked
