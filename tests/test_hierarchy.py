"""Hierarchical segmentation: ``query.py --granularity`` / ``--hierarchy`` (stages/hierarchy.py,
docs/method.md §5.8).

* a hand-built feature case whose three levels are known in advance (part = one cluster, object =
  two, group = three), and nesting for any scales on random features;
* on a tiny trained generated scene: the saved levels nest, the object level is byte-equal to the
  plain text query, the JSON's counts are the .npy sums, render.py renders the levels unchanged;
* the bad-input lines.
"""
import json

import numpy as np
import pytest
import torch

import query
import render
from arguments import Config
from scene.grounding import refine_selection
from scene.lerf_labels import read_gt
from stages.hierarchy import granularity_scale, level_selection, object_regions
from stages.query import QueryModel
from scene_factory import one_line_error, train_tiny_run  # tests/ is on the pythonpath (pyproject.toml)


# ---------------------------------------------------------------------------------------------
# Four clusters of unit features in 3-D, d = 1. Seed cluster A = e1; cos(A, B) = 0.7,
# cos(A, C) = 0.4, cos(A, D) = 0. Thresholds around the seed: part 1 - 0.5*0.4 = 0.8 -> A;
# object 1 - 0.4 = 0.6 -> A + B (mean relevancy 0.9 >= 0.5: accepted); group 1 - 2*0.4 = 0.2 -> A + B + C.
CLUSTERS = {"A": ((1.0, 0.0, 0.0), 1.0), "B": ((0.7, np.sqrt(1 - 0.49), 0.0), 0.8),
            "C": ((0.4, 0.0, np.sqrt(1 - 0.16)), 0.0), "D": ((0.0, 0.0, -1.0), 0.0)}


@pytest.fixture()
def clusters():
    owner = np.repeat(list(CLUSTERS), 5)
    feats = torch.tensor([CLUSTERS[c][0] for c in owner], dtype=torch.float32)
    score = torch.tensor([CLUSTERS[c][1] for c in owner], dtype=torch.float32)
    n = len(owner)
    qm = QueryModel({}, torch.zeros(n, 2), 1.0, feats, torch.full((n,), 0.9), {})
    return qm, score, owner


def test_three_clusters_give_the_known_levels(clusters):
    qm, score, owner = clusters
    cfg = Config()
    obj, regions = object_regions(cfg, qm, score)
    assert torch.equal(obj, refine_selection(score, qm.feats, qm.opacity, qm.d))   # the plain selection
    assert len(regions) == 1 and owner[regions[0][0]] == "A" and regions[0][1] == 0.4
    want = {"part": {"A"}, "object": {"A", "B"}, "group": {"A", "B", "C"}}
    for g, members in want.items():
        _, s = granularity_scale(cfg, g)
        sel, parts = level_selection(qm.feats, qm.d, obj, regions, s)
        assert np.array_equal(sel.numpy(), np.isin(owner, sorted(members))), g
        assert len(parts) == 1 and torch.equal(parts[0], sel)
    # a tighter part scale keeps the seed's cluster, a looser group scale does not reach D (cos 0)
    assert np.array_equal(level_selection(qm.feats, qm.d, obj, regions, 0.1)[0].numpy(), owner == "A")
    assert not level_selection(qm.feats, qm.d, obj, regions, 2.4)[0].numpy()[owner == "D"].any()
    assert level_selection(qm.feats, qm.d, obj, regions, 2.6)[0].numpy().all()      # 1 - 2.6*0.4 < 0


def test_levels_nest_for_any_scales_on_random_features():
    g = torch.Generator().manual_seed(3)
    n = 400
    centres = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    which = torch.randint(0, 12, (n,), generator=g)
    feats = torch.nn.functional.normalize(centres[which] + 0.25 * torch.randn(n, 8, generator=g), dim=1)
    score = torch.rand(12, generator=g)[which].clamp(0, 1) * (torch.rand(n, generator=g) * 0.4 + 0.8)
    qm = QueryModel({}, torch.zeros(n, 2), 0.6, feats, torch.rand(n, generator=g), {})
    obj, regions = object_regions(Config(), qm, score.clamp(0, 1))
    assert len(regions) >= 2
    assert torch.equal(obj, refine_selection(score.clamp(0, 1), feats, qm.opacity, 0.6))
    sels = [level_selection(feats, 0.6, obj, regions, s)[0] for s in (0.1, 0.3, 0.5, 0.8, 1.0, 1.3, 2.0, 3.0)]
    assert torch.equal(sels[4], obj)
    for fine, coarse in zip(sels, sels[1:]):
        assert not bool((fine & ~coarse).any())
    assert int(sels[0].sum()) < int(obj.sum()) < int(sels[-1].sum())            # the levels differ here


def test_bad_granularities_are_one_line_value_errors():
    cfg = Config()
    assert granularity_scale(cfg, "part") == ("part", 0.5) and granularity_scale(cfg, "1.5") == ("1.5", 1.5)
    for bad, needle in (("parts", "unknown granularity 'parts'"), ("0", "must be a positive number"),
                        ("-1", "must be a positive number"), ("nan", "must be a positive number")):
        with pytest.raises(ValueError, match=needle) as e:
            granularity_scale(cfg, bad)
        assert "\n" not in str(e.value)
    cfg.query.part_scale = 1.5
    with pytest.raises(ValueError, match=r"query.part_scale must be in \(0, 1\]"):
        granularity_scale(cfg, "group")


# ---------------------------------------------------------------------------------------------
# The tiny trained generated scene of tests/scene_factory.py (~15-20 s on 2 cores).
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hierarchy")
    run = train_tiny_run(root, "h")
    return run, read_gt(root / "data" / "label" / "h" / "gt")


def test_hierarchy_nests_and_its_object_level_is_the_text_query(trained, capsys):
    run, gt = trained
    cat = sorted({c for frame in gt.values() for c in frame})[0]
    q = run / "queries"
    assert query.main(["-m", str(run), "--query", cat]) == 0
    plain = (q / f"{cat}.npy").read_bytes()
    assert query.main(["-m", str(run), "--query", cat, "--hierarchy"]) == 0
    assert query.main(["-m", str(run), "--query", cat, "--granularity", "0.25"]) == 0
    assert (q / f"{cat}@object.npy").read_bytes() == plain                      # byte-equal selection
    levels = {g: np.load(q / f"{cat}@{g}.npy") for g in ("0.25", "part", "object", "group")}
    for fine, coarse in zip(list(levels), list(levels)[1:]):
        assert not (levels[fine] & ~levels[coarse]).any(), (fine, coarse)
    tree = json.loads((q / f"{cat}_hierarchy.json").read_text())
    nodes = {n["id"]: n for n in tree["nodes"]}
    index = json.loads((q / "index.json").read_text())["queries"]
    for n in nodes.values():
        if n["parent"] is not None:
            assert n["n_gaussians"] <= nodes[n["parent"]]["n_gaussians"]
        if n["kind"] == "level":
            sel = np.load(q / n["file"])
            assert n["n_gaussians"] == int(sel.sum()) == index[f"{cat}@{n['granularity']}"]["n_selected"]
            assert index[f"{cat}@{n['granularity']}"]["prompt"] == {"text": cat, "granularity": n["granularity"]}
    lv = [nodes[i]["granularity"] for i in sorted(nodes) if nodes[i]["kind"] == "level"]
    assert lv == ["group", "object", "part"] and nodes[0]["parent"] is None
    regions = [n for n in nodes.values() if n["kind"] == "region"]
    assert regions and sum(n["n_gaussians"] for n in regions if n["granularity"] == "object") == levels["object"].sum()
    # the part level asked alone is the hierarchy's part level
    part = levels["part"].copy()
    assert query.main(["-m", str(run), "--query", cat, "--granularity", "part"]) == 0
    assert np.array_equal(np.load(q / f"{cat}@part.npy"), part)
    with capsys.disabled():
        print(f"\nhierarchy of {cat!r}: " + ", ".join(f"{g} {int(s.sum())}" for g, s in levels.items())
              + f" of {part.shape[0]} Gaussians")
    assert render.main(["-m", str(run)]) == 0                   # unchanged: renders every recorded selection
    frame = sorted(gt)[0]
    for g in ("part", "object", "group"):
        assert (run / "renders" / frame / f"{cat}@{g}.png").is_file()



def test_bad_levels_on_the_command_line(trained, capsys):
    run, _ = trained
    capsys.readouterr()
    before = (run / "queries" / "index.json").read_bytes() if (run / "queries" / "index.json").exists() else None
    cases = [(["--query", "x", "--granularity", "parts"], ["unknown granularity 'parts'"]),
             (["--query", "x", "--granularity", "0"], ["must be a positive number"]),
             (["--query", "x", "--granularity", "-2"], ["must be a positive number"]),
             (["--hierarchy"], ["--hierarchy needs exactly one --query"]),
             (["--query", "x", "--hierarchy", "--granularity", "part"], ["not both"]),
             (["--query", "x", "--granularity", "part", "--set", "query.mode=language_only"],
              ["query.mode 'language_only' has none"])]
    for argv, needles in cases:
        assert query.main(["-m", str(run), *argv]) == 2, argv
        one_line_error(capsys, *needles)
    after = (run / "queries" / "index.json").read_bytes() if (run / "queries" / "index.json").exists() else None
    assert after == before                                     # nothing recorded
