"""Tests for scene/gaussian_model.py: 3DGS PLY i/o, init from points, checkpoints."""
import math

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from scene.gaussian_model import (
    SH_C0,
    init_from_points,
    load_checkpoint,
    load_ply,
    num_sh_bases,
    random_init,
    rgb_to_sh,
    save_checkpoint,
    save_ply,
    sh_to_rgb,
)

# The vertex property order of graphdeco-inria 3DGS point_cloud.ply at SH degree 3, written out.
GRAPHDECO_NAMES_DEG3 = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def _random_params(n, degree, n_sem=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = (degree + 1) ** 2
    p = {
        "means": torch.randn(n, 3, generator=g),
        "scales": torch.randn(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, K - 1, 3, generator=g),
    }
    if n_sem:
        p["ins_feat"] = torch.randn(n, n_sem, generator=g) * 5
    return p


# ---------------------------------------------------------------------------------------------
# SH helpers
# ---------------------------------------------------------------------------------------------
def test_sh_constants():
    assert SH_C0 == pytest.approx(1.0 / (2.0 * math.sqrt(math.pi)), abs=1e-15)
    assert [num_sh_bases(d) for d in range(4)] == [1, 4, 9, 16]
    rgb = torch.tensor([[0.0, 0.5, 1.0]])
    assert torch.allclose(rgb_to_sh(rgb), torch.tensor([[-0.5 / SH_C0, 0.0, 0.5 / SH_C0]]))
    assert torch.allclose(sh_to_rgb(rgb_to_sh(rgb)), rgb)


# ---------------------------------------------------------------------------------------------
# PLY
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degree", [0, 3])
@pytest.mark.parametrize("n_sem", [0, 16])
def test_ply_round_trip_bit_exact(tmp_path, degree, n_sem):
    p = _random_params(37, degree, n_sem)
    path = tmp_path / "sub" / "dir" / "point_cloud.ply"  # parent dirs are created
    save_ply(path, p)
    q = load_ply(path)
    assert set(q) == set(p)
    for k in p:
        assert q[k].dtype == torch.float32
        assert q[k].shape == p[k].shape, k
        assert torch.equal(q[k], p[k]), k
    assert [f.name for f in (tmp_path / "sub" / "dir").iterdir()] == ["point_cloud.ply"]  # no temp left


def test_ply_explicit_semantic_argument(tmp_path):
    p = _random_params(5, 1)
    sem = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4)
    save_ply(tmp_path / "a.ply", p, semantic=sem)
    names = [pr.name for pr in PlyData.read(str(tmp_path / "a.ply"))["vertex"].properties]
    assert names[-4:] == ["semantic_0", "semantic_1", "semantic_2", "semantic_3"]
    assert torch.equal(load_ply(tmp_path / "a.ply")["ins_feat"], sem)


def test_read_graphdeco_ply_by_hand(tmp_path):
    N = 4
    vals = {}
    vert = np.zeros(N, dtype=[(n, "f4") for n in GRAPHDECO_NAMES_DEG3])
    for j, name in enumerate(GRAPHDECO_NAMES_DEG3):
        col = np.arange(N, dtype=np.float32) * 1000.0 + j  # value identifies (row, property)
        vert[name] = col
        vals[name] = col
    path = tmp_path / "graphdeco.ply"
    PlyData([PlyElement.describe(vert, "vertex")]).write(str(path))

    p = load_ply(path)
    assert p["shN"].shape == (N, 15, 3)
    for c in range(3):
        for k in range(15):
            assert np.array_equal(p["shN"][:, k, c].numpy(), vals[f"f_rest_{c * 15 + k}"])
        assert np.array_equal(p["sh0"][:, 0, c].numpy(), vals[f"f_dc_{c}"])
        assert np.array_equal(p["means"][:, c].numpy(), vals["xyz"[c]])
        assert np.array_equal(p["scales"][:, c].numpy(), vals[f"scale_{c}"])
    for i in range(4):
        assert np.array_equal(p["quats"][:, i].numpy(), vals[f"rot_{i}"])
    assert np.array_equal(p["opacities"].numpy(), vals["opacity"])
    assert "ins_feat" not in p

    # and writing it back gives exactly graphdeco's header order and dtype, and the same bytes
    out = tmp_path / "ours.ply"
    save_ply(out, p)
    ply = PlyData.read(str(out))
    assert [pr.name for pr in ply["vertex"].properties] == GRAPHDECO_NAMES_DEG3
    assert all(ply["vertex"].data.dtype[i].str == "<f4" for i in range(len(GRAPHDECO_NAMES_DEG3)))
    head = out.read_bytes()[:80].decode("ascii", "replace")
    assert head.startswith("ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty float x\n")
    ref = vert.copy()
    ref[["nx", "ny", "nz"]] = 0  # we always write zero normals, as 3DGS does
    assert ply["vertex"].data.tobytes() == ref.astype([(n, "<f4") for n in GRAPHDECO_NAMES_DEG3]).tobytes()


def test_ply_any_order_any_float_type(tmp_path):
    names = ["rot_3", "opacity", "z", "y", "x", "f_dc_2", "f_dc_1", "f_dc_0"] + [
        "scale_2", "scale_1", "scale_0", "rot_0", "rot_1", "rot_2", "semantic_1", "semantic_0",
    ]
    vert = np.zeros(3, dtype=[(n, "f8") for n in names])
    for j, n in enumerate(names):
        vert[n] = np.arange(3) + 10 * j
    path = tmp_path / "shuffled.ply"
    PlyData([PlyElement.describe(vert, "vertex")], byte_order=">").write(str(path))
    p = load_ply(path)
    assert p["shN"].shape == (3, 0, 3)
    assert np.array_equal(p["means"].numpy(), np.stack([vert["x"], vert["y"], vert["z"]], 1).astype(np.float32))
    assert np.array_equal(p["ins_feat"].numpy(), np.stack([vert["semantic_0"], vert["semantic_1"]], 1))
    assert np.array_equal(p["quats"][:, 3].numpy(), vert["rot_3"].astype(np.float32))


def test_ply_sh_degree_truncate_and_pad(tmp_path):
    p = _random_params(6, 3)
    save_ply(tmp_path / "d3.ply", p)
    q1 = load_ply(tmp_path / "d3.ply", sh_degree=1)
    assert q1["shN"].shape == (6, 3, 3)
    assert torch.equal(q1["shN"], p["shN"][:, :3])
    p1 = _random_params(6, 1)
    save_ply(tmp_path / "d1.ply", p1)
    q3 = load_ply(tmp_path / "d1.ply", sh_degree=3)
    assert q3["shN"].shape == (6, 15, 3)
    assert torch.equal(q3["shN"][:, :3], p1["shN"])
    assert torch.count_nonzero(q3["shN"][:, 3:]) == 0
    # save at a requested lower degree: 9 f_rest, holding the first 3 coefficients per channel
    save_ply(tmp_path / "w1.ply", p, sh_degree=1)
    assert torch.equal(load_ply(tmp_path / "w1.ply")["shN"], p["shN"][:, :3])


def test_ply_missing_properties(tmp_path):
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "scale_0", "scale_1", "scale_2", "rot_0"]
    vert = np.zeros(2, dtype=[(n, "f4") for n in names])
    path = tmp_path / "partial.ply"
    PlyData([PlyElement.describe(vert, "vertex")]).write(str(path))
    with pytest.raises(ValueError) as ei:
        load_ply(path)
    msg = str(ei.value)
    assert str(path) in msg and "missing PLY properties" in msg
    for n in ["opacity", "rot_1", "rot_2", "rot_3"]:
        assert n in msg
    assert "x," not in msg and "scale_0" not in msg


def test_ply_bad_files(tmp_path):
    txt = tmp_path / "notes.ply"
    txt.write_text("this is not a ply file\n")
    with pytest.raises(ValueError, match="notes.ply"):
        load_ply(txt)
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        load_ply(tmp_path / "nope.ply")
    vert = np.zeros(2, dtype=[(n, "f4") for n in GRAPHDECO_NAMES_DEG3[:9] + ["f_rest_0", "f_rest_1"]])
    odd = tmp_path / "odd.ply"
    PlyData([PlyElement.describe(vert, "vertex")]).write(str(odd))
    with pytest.raises(ValueError, match="f_rest"):
        load_ply(odd)


# ---------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------
def test_init_from_points_matches_brute_force():
    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(50, 3)) * [1.0, 2.0, 0.5]
    rgb = rng.uniform(size=(50, 3))
    p = init_from_points(torch.tensor(xyz), torch.tensor(rgb, dtype=torch.float32), sh_degree=3)

    d2 = ((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    ref = np.log(np.sqrt(np.maximum(np.sort(d2, axis=1)[:, :3].mean(1), 1e-7)))
    assert np.allclose(p["scales"].numpy(), np.repeat(ref[:, None], 3, 1), atol=1e-6)
    assert torch.allclose(p["opacities"], torch.full((50,), math.log(0.1 / 0.9)))
    assert torch.allclose(torch.sigmoid(p["opacities"]), torch.full((50,), 0.1))
    assert torch.equal(p["quats"], torch.tensor([[1.0, 0, 0, 0]]).repeat(50, 1))
    assert np.allclose(sh_to_rgb(p["sh0"][:, 0]).numpy(), rgb, atol=1e-6)
    assert p["shN"].shape == (50, 15, 3) and torch.count_nonzero(p["shN"]) == 0
    assert all(v.dtype == torch.float32 for v in p.values())


def test_init_from_few_points_and_errors():
    # 3 points on a line at 0, 1, 3: neighbours are the other two
    xyz = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]])
    p = init_from_points(xyz, torch.full((3, 3), 0.5), sh_degree=0)
    want = [math.log(math.sqrt((1 + 9) / 2)), math.log(math.sqrt((1 + 4) / 2)), math.log(math.sqrt((9 + 4) / 2))]
    assert torch.allclose(p["scales"][:, 0], torch.tensor(want))
    assert p["shN"].shape == (3, 0, 3)
    one = init_from_points(torch.zeros(1, 3), torch.zeros(1, 3))
    assert torch.allclose(one["scales"], torch.full((1, 3), math.log(math.sqrt(1e-7))))
    dup = init_from_points(torch.zeros(5, 3), torch.zeros(5, 3))  # duplicates: clamp at 1e-7
    assert torch.isfinite(dup["scales"]).all()
    with pytest.raises(ValueError, match="empty"):
        init_from_points(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="rgb"):
        init_from_points(torch.zeros(4, 3), torch.zeros(3, 3))


def test_random_init():
    p = random_init(200, extent=2.5, sh_degree=1, seed=0)
    assert p["means"].shape == (200, 3) and p["shN"].shape == (200, 3, 3)
    assert p["means"].abs().max() <= 2.5 and p["means"].abs().max() > 2.0
    assert torch.equal(random_init(20, 1.0, seed=7)["means"], random_init(20, 1.0, seed=7)["means"])
    rgb = sh_to_rgb(p["sh0"][:, 0])
    assert rgb.min() >= -1e-6 and rgb.max() <= 1 + 1e-6
    assert torch.allclose(torch.sigmoid(p["opacities"]), torch.full((200,), 0.1))  # 3DGS init opacity


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    p = {k: torch.nn.Parameter(v) for k, v in _random_params(10, 1, n_sem=4).items()}
    opt = torch.optim.Adam([p["means"], p["ins_feat"]], lr=1e-3)
    (p["means"].sum() + (p["ins_feat"] ** 2).sum()).backward()
    opt.step()
    strategy_state = {"grad2d": torch.rand(10), "count": torch.arange(10.0), "scene_scale": 1.5}
    path = tmp_path / "ckpt" / "chkpnt30.pt"
    save_checkpoint(path, p, step=30, extra={"note": "x", "sh_degree": 1},
                    optimizers={"main": opt}, strategy_state=strategy_state)
    ck = load_checkpoint(path)
    assert ck["format_version"] == 1 and ck["step"] == 30
    assert ck["extra"] == {"note": "x", "sh_degree": 1}
    for k in p:
        assert torch.equal(ck["params"][k], p[k].detach())
        assert not isinstance(ck["params"][k], torch.nn.Parameter)
    assert torch.equal(ck["strategy_state"]["grad2d"], strategy_state["grad2d"])
    assert ck["strategy_state"]["scene_scale"] == 1.5
    # the Adam state restores into a fresh optimizer and matches the original exactly
    sd = ck["optimizers"]["main"]
    ref = opt.state_dict()
    for i in (0, 1):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sd["state"][i][key], ref["state"][i][key])
    q = {k: torch.nn.Parameter(v) for k, v in ck["params"].items()}
    opt2 = torch.optim.Adam([q["means"], q["ins_feat"]], lr=1.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 1e-3
    # weights_only=True load works: only plain types were stored
    torch.load(str(path), weights_only=True)


def test_checkpoint_errors(tmp_path):
    bad = tmp_path / "v2.pt"
    torch.save({"format_version": 2, "step": 0, "params": {}}, str(bad))
    with pytest.raises(ValueError, match=r"v2\.pt.*format_version"):
        load_checkpoint(bad)
    nover = tmp_path / "nover.pt"
    torch.save({"step": 0}, str(nover))
    with pytest.raises(ValueError, match=r"nover\.pt.*format_version"):
        load_checkpoint(nover)
    txt = tmp_path / "text.pt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match=r"text\.pt"):
        load_checkpoint(txt)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
