"""The rules of arguments/cos3d_plus.yaml beyond the connectivity (tests/test_grounding.py has that):
mask coverage (stages/coverage.py) with the collaborative rule's ``allowed`` Gaussians
(scene.grounding.refine_selection, ``query.mask_coverage_min``), and the relevancy contrasted
against the other queries (``query.contrast_queries``).

* the per-Gaussian (masked, total) footprint weights from one backward pass equal the sums of every
  Gaussian's own weight map, rendered forward with identity features (one channel per Gaussian);
* coverage = masked / total, 0 for a Gaussian never drawn;
* on a hand-built instance field, a disallowed Gaussian is neither a seed nor in a region, and an
  all-true ``allowed`` is the paper's rule;
* contrast: the relevancy equals the LERF formula's minimum, evaluated pair by pair, over the
  canonical negatives and the other queries.
"""
import math

import pytest
import torch

from gaussian_renderer import render
from scene.cameras import Camera, intrinsics, look_at
from scene.grounding import refine_selection, relevancy
from stages.coverage import coverage_from_weights, footprint_weights


def _camera(width=24, height=18):
    R, t = look_at((0.0, -3.0, 0.4), (0.0, 0.0, 0.0))
    return Camera(uid=0, image_name="frame_00001", R=R, t=t, K=intrinsics(0.9 * width, 0.9 * width, width / 2, height / 2),
                  width=width, height=height)


def _scene(n=30, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"means": (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.4, 1.0, 1.0]),
            "scales": torch.log(torch.rand(n, 3, generator=g) * 0.3 + 0.05),
            "quats": torch.randn(n, 4, generator=g),
            "opacities": torch.randn(n, generator=g) * 2.0 + 1.0}


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_footprint_weights_are_sums_of_the_weight_maps(backend):
    if backend == "cpp":
        from gaussian_renderer import cpp_backend
        if not cpp_backend.available():
            pytest.skip("C++ backend not built")
    n, cam = 30, _camera()
    g = _scene(n)
    g["means"][0] = torch.tensor([0.0, 10.0, 50.0])            # far outside the view: never drawn
    masks = []
    ref = torch.zeros(n, 2, dtype=torch.float64)
    for k, cam_k in enumerate([cam, _camera(24, 18)]):
        m = torch.zeros(cam_k.height, cam_k.width, dtype=torch.bool)
        m[:, : cam_k.width // 2 + 3 * k] = True                # a different mask per view
        m[2:5, -4:] = True
        masks.append(m)
        w = render(g, cam_k, features=torch.eye(n), backend="torch", return_depth=False).color.double()  # [H,W,N]
        ref[:, 0] += (w * m[..., None]).sum((0, 1))
        ref[:, 1] += w.sum((0, 1))
    got = footprint_weights(g, [cam, _camera(24, 18)], masks, {"backend": backend})
    assert ref[:, 1].gt(0).sum() >= 20 and 0 < ref[:, 0].sum() < ref[:, 1].sum()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    cov = coverage_from_weights(got)
    assert cov[0] == 0 and ref[0, 1] == 0
    ok = ref[:, 1] > 0
    torch.testing.assert_close(cov[ok].double(), ref[ok, 0] / ref[ok, 1], rtol=1e-4, atol=1e-5)


def test_coverage_of_hand_weights():
    w = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 4.0], [3.0, 3.0]], dtype=torch.float64)
    assert coverage_from_weights(w).tolist() == [0.0, 0.0, 0.25, 1.0]


def _field():
    """Two objects in feature space: {0,1,2,3} around e0 and {4,5} around e1; d = 1."""
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    near = torch.nn.functional.normalize(torch.tensor([1.0, 0.1]), dim=0)
    feats = torch.stack([e0, e0, near, near, e1, e1])
    score = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.0, 0.1])
    return score, feats, torch.full((6,), 0.9)


def test_refine_selection_allowed():
    score, feats, opacity = _field()
    paper = refine_selection(score, feats, opacity, d=1.0)
    assert paper.tolist() == [True, True, True, True, False, False]
    same = refine_selection(score, feats, opacity, d=1.0, allowed=torch.ones(6, dtype=torch.bool))
    assert same.tolist() == paper.tolist()
    allowed = torch.tensor([True, True, False, True, True, True])
    got = refine_selection(score, feats, opacity, d=1.0, allowed=allowed)
    assert got.tolist() == [True, True, False, True, False, False]
    # the best-scoring Gaussian is not allowed: it is not the seed, and not selected
    regions = []
    allowed = torch.tensor([False, True, True, True, True, True])
    got = refine_selection(score, feats, opacity, d=1.0, allowed=allowed, regions=regions)
    assert got.tolist() == [False, True, True, True, False, False]
    assert [r[0] for r in regions] == [1]
    with pytest.raises(ValueError, match="allowed must be a bool"):
        refine_selection(score, feats, opacity, d=1.0, allowed=torch.ones(5, dtype=torch.bool))


def test_contrast_relevancy_is_the_pairwise_minimum_over_other_queries():
    g = torch.Generator().manual_seed(5)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    lang, pos, neg = unit(torch.randn(50, 8, generator=g)), unit(torch.randn(4, 8, generator=g)), unit(torch.randn(3, 8, generator=g))
    got = relevancy(lang, pos, neg, contrast=True, chunk_size=16)
    plain = relevancy(lang, pos, neg)
    for q in range(4):
        others = [neg[k] for k in range(3)] + [pos[j] for j in range(4) if j != q]
        for i in range(50):
            a = math.exp(10 * float(lang[i] @ pos[q]))
            ref = min(a / (a + math.exp(10 * float(lang[i] @ t))) for t in others)
            assert abs(float(got[q, i]) - ref) < 1e-5
    assert (got <= plain + 1e-7).all() and (got < plain - 1e-3).any()
    torch.testing.assert_close(relevancy(lang, pos[:1], neg, contrast=True), plain[:1])
