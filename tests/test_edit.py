"""Editing with a selection (stages/edit.py): query.py --export / --remove / --sheet, render.py --edited.

Checked against values computed here: the PLYs read with plyfile and compared with the instance PLY
minus the query's saved mask, the renders compared inside and outside the object's ground-truth mask,
the sheet's tiles compared with direct renders of the written PLYs.
"""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData
from scipy.ndimage import binary_dilation

import query
import render
from arguments.cli import load_run_config
from gaussian_renderer import render as rasterize
from scene.gaussian_model import load_ply
from scene.lerf_labels import read_gt
from stages.edit import contact_sheet
from scene_factory import one_line_error, train_tiny_run  # tests/ is on the pythonpath (pyproject.toml)

SMALL = {"n_views": 12, "width": 64, "height": 48, "n_objects": 5, "n_labelled": 3, "n_points": 2000}
# trained with tests/scene_factory.py's TINY_SCHEDULE (one thread: tiny tensors): ~30 s on 2 busy cores;
# "green apple" comes out clean (measured: 86-92% of its gt pixels change by > 30 levels when removed,
# at most 2 levels anywhere 2 px away from it)
Q = "green apple"


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    run = train_tiny_run(root, "tiny", seed=3, scene=SMALL)
    assert query.main(["-m", str(run), "--query", Q, "--export", "--remove", "--sheet"]) == 0
    for ply in (run / "rgb" / "point_cloud.ply", run / "queries" / f"{Q}_removed.ply"):
        assert render.main(["-m", str(run), "--edited", str(ply)]) == 0
    return root, run


def vertices(path):
    v = PlyData.read(str(path))["vertex"]
    return [p.name for p in v.properties], v.data


def standard_names(n_rest):
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def test_removed_ply_is_the_scene_without_the_selection(edited):
    _, run = edited
    names, inst = vertices(run / "instance" / "point_cloud.ply")
    sel = np.load(run / "queries" / f"{Q}.npy")
    assert sel.dtype == bool and sel.shape == (len(inst),) and 0 < sel.sum() < len(inst)
    got_names, removed = vertices(run / "queries" / f"{Q}_removed.ply")
    assert len(removed) == len(inst) - sel.sum()
    n_rest = sum(n.startswith("f_rest_") for n in names)
    assert got_names == standard_names(n_rest)  # the graphdeco layout exactly: no semantic_*
    for n in got_names:
        np.testing.assert_array_equal(removed[n], inst[n][~sel], err_msg=n)  # the unselected ones, in order


def test_export_and_remove_partition_the_model(edited):
    _, run = edited
    names, inst = vertices(run / "instance" / "point_cloud.ply")
    std = standard_names(sum(n.startswith("f_rest_") for n in names))
    rows = lambda data: {tuple(r) for r in np.stack([np.asarray(data[n]) for n in std], axis=1).tolist()}
    everything = rows(inst)
    assert len(everything) == len(inst)  # distinct Gaussians, so sets compare them
    sel_rows = rows(vertices(run / "queries" / f"{Q}.ply")[1])
    rest_rows = rows(vertices(run / "queries" / f"{Q}_removed.ply")[1])
    assert sel_rows | rest_rows == everything and not sel_rows & rest_rows
    assert len(sel_rows) == np.load(run / "queries" / f"{Q}.npy").sum()


def png(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_removal_changes_the_object_and_nothing_else(edited):
    root, run = edited
    gt = read_gt(root / "data" / "label" / "tiny" / "gt")
    frames = [f for f in sorted(gt) if Q in gt[f]]
    assert len(frames) >= 2
    for frame in frames:
        before = png(run / "renders_edited" / "point_cloud" / f"{frame}.png")
        after = png(run / "renders_edited" / f"{Q}_removed" / f"{frame}.png")
        diff = np.abs(after - before).max(axis=-1)
        obj = gt[frame][Q]
        assert diff[obj].mean() > 30 and (diff[obj] > 30).mean() > 0.6, (frame, diff[obj].mean())
        outside = ~binary_dilation(obj, iterations=2)  # the object's blurred edge is 1-2 px wide
        assert diff[outside].max() <= 10 and diff[outside].mean() < 0.5, (frame, diff[outside].max())


def test_render_edited_writes_every_view_at_its_size(edited, tmp_path, capsys):
    root, run = edited
    images = sorted((root / "data" / "tiny" / "images").glob("*.png"))
    out = run / "renders_edited" / f"{Q}_removed"
    assert sorted(p.name for p in out.glob("*.png")) == [p.name for p in images]
    for img in images:
        assert Image.open(out / img.name).size == Image.open(img).size
    copy = tmp_path / "other.ply"  # --views test: the 3DGS holdout, sorted views i % 8 == 0
    shutil.copy(run / "queries" / f"{Q}_removed.ply", copy)
    assert render.main(["-m", str(run), "--edited", str(copy), "--views", "test"]) == 0
    assert sorted(p.name for p in (run / "renders_edited" / "other").glob("*.png")) == \
        [p.name for i, p in enumerate(images) if i % 8 == 0]


def test_contact_sheet_tiles_are_the_three_models(edited):
    root, run = edited
    cfg = load_run_config(run)
    gt = read_gt(root / "data" / "label" / "tiny" / "gt")
    frames = [f for f in sorted(gt) if Q in gt[f]][:4]
    sheet = png(run / "queries" / f"{Q}_sheet.png")
    H, W = SMALL["height"], SMALL["width"]
    assert sheet.shape == (len(frames) * H, 3 * W, 3)

    from scene.dataset import load_scene_from_config

    cams = {c.image_name: c for c in load_scene_from_config(cfg.data, cfg.rgb.holdout_offset).all_cameras}

    def direct(ply, bg):
        params = {k: v for k, v in load_ply(ply).items() if k != "ins_feat"}
        out = [rasterize(params, cams[f], bg=torch.full((3,), bg), return_depth=False, **cfg.renderer.kwargs())
               for f in frames]
        return [(o.color.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8).astype(int) for o in out]

    full = direct(run / "instance" / "point_cloud.ply", 0.0)
    alone = direct(run / "queries" / f"{Q}.ply", 1.0)
    after = direct(run / "queries" / f"{Q}_removed.ply", 0.0)
    params = load_ply(run / "instance" / "point_cloud.ply")
    raw = contact_sheet(cfg, params, np.load(run / "queries" / f"{Q}.npy"), [cams[f] for f in frames], labels=False)
    for i in range(len(frames)):
        tiles = [raw[i * H:(i + 1) * H, j * W:(j + 1) * W].astype(int) for j in range(3)]
        for j, want in enumerate((full[i], alone[i], after[i])):
            np.testing.assert_array_equal(tiles[j], want, err_msg=f"row {i} column {j}")
        # the PNG: the same, but for the small labels (column names on the first row, the view's name
        # at the bottom-left of its first tile)
        top = 16 if i == 0 else 0
        np.testing.assert_array_equal(sheet[i * H + top:(i + 1) * H, 2 * W:], after[i][top:])
        np.testing.assert_array_equal(sheet[i * H + top:(i + 1) * H, W:2 * W], alone[i][top:])


def test_bad_input_one_line(edited, tmp_path, capsys):
    _, run = edited
    capsys.readouterr()
    assert render.main(["-m", str(run), "--edited", str(tmp_path / "nope.ply")]) == 2
    one_line_error(capsys, "nope.ply", "not found")
    (tmp_path / "notes.ply").write_text("hello\n")
    assert render.main(["-m", str(run), "--edited", str(tmp_path / "notes.ply")]) == 2
    one_line_error(capsys, "notes.ply", "not a readable PLY file")
    cloud = tmp_path / "cloud.ply"  # a plain point cloud: a PLY, but no Gaussians
    cloud.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                      b"property float z\nend_header\n0 0 0\n")
    assert render.main(["-m", str(run), "--edited", str(cloud)]) == 2
    one_line_error(capsys, "cloud.ply", "not a 3DGS PLY", "f_dc_0")
    assert not any((run / "renders_edited" / s).exists() for s in ("nope", "notes", "cloud"))

    assert query.main(["-m", str(run), "--remove"]) == 2
    one_line_error(capsys, "--remove needs", "--query")

    # renders of another PLY of the same name are refused, not mixed in
    before = sorted((run / "renders_edited" / "point_cloud").iterdir())
    assert render.main(["-m", str(run), "--edited", str(run / "instance" / "point_cloud.ply")]) == 2
    one_line_error(capsys, "renders_edited/point_cloud", "rgb/point_cloud.ply")
    assert sorted((run / "renders_edited" / "point_cloud").iterdir()) == before


def test_clashing_output_names_are_refused(edited, tmp_path, capsys):
    """The query '<Q>_removed' exports '<Q>_removed.ply', the name of <Q>'s removal: neither may
    overwrite the other, whichever comes second is refused before anything is written."""
    _, trained = edited
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    removed = run / "queries" / f"{Q}_removed.ply"
    mtime = removed.stat().st_mtime_ns
    capsys.readouterr()
    assert query.main(["-m", str(run), "--query", f"{Q}_removed", "--export"]) == 2
    one_line_error(capsys, f"{Q}_removed.ply", repr(Q), repr(f"{Q}_removed"), "--export", "--remove")
    assert removed.stat().st_mtime_ns == mtime and not (run / "queries" / f"{Q}_removed.npy").exists()
    assert query.main(["-m", str(run), "--query", f"{Q}_removed"]) == 0  # the query alone is fine
    assert query.main(["-m", str(run), "--query", Q, "--remove"]) == 2
    one_line_error(capsys, f"{Q}_removed.ply", repr(Q), repr(f"{Q}_removed"))
    assert removed.stat().st_mtime_ns == mtime


def test_empty_and_full_selections(edited, tmp_path):
    """A query that selects nothing (or everything): a 0-Gaussian PLY, and the other one whole."""
    from stages.edit import export_selection, remove_selection

    _, run = edited
    params = load_ply(run / "instance" / "point_cloud.ply")
    n = params["means"].shape[0]
    for sel, empty in ((np.zeros(n, bool), "export"), (np.ones(n, bool), "remove")):
        e = export_selection(tmp_path / "e.ply", params, sel)
        r = remove_selection(tmp_path / "r.ply", params, sel)
        counts = {"export": len(vertices(e)[1]), "remove": len(vertices(r)[1])}
        assert counts == ({"export": 0, "remove": n} if empty == "export" else {"export": n, "remove": 0})
        assert vertices(r)[0] == standard_names(sum(k.startswith("f_rest_") for k in vertices(e)[0]))
