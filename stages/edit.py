"""Editing a scene with a selection: split it, export or remove the object, look at the result.

* ``split_model``: a Gaussian dict and a bool [N] selection -> (the selected Gaussians, the rest).
* ``export_selection`` / ``remove_selection``: the selection alone / the scene without it as a 3DGS
  PLY (``query.py --export`` -> ``queries/<query>.ply``, ``--remove`` -> ``queries/<query>_removed.ply``).
  The removed scene keeps only the standard properties (no ``semantic_*``): it is a file for splat
  viewers, some of which read the 62-float row of graphdeco's PLY as a fixed layout; the export keeps
  the object's instance features, as it always did.
* ``render_model_views``: any Gaussian dict rendered in given views -> ``<out_dir>/<view>.png``
  (``render.py --edited`` -> ``renders_edited/<ply stem>/``).
* ``contact_sheet``: rows = views, columns = before (the whole model), the selection alone (on white,
  as ``renders_rgb/``) and after (the model without it) -> uint8 [rows H, 3 W, 3]
  (``query.py --sheet`` -> ``queries/<query>_sheet.png``).

Everything takes loaded objects (a config, a Gaussian dict, cameras), not file names, so an
interactive viewer can call it; every file is written under a temporary name and renamed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from arguments import Config
from gaussian_renderer import render
from scene.atomic import file_sha256, png_save, write_json
from scene.dataset import load_scene_from_config
from scene.errors import StageError
from scene.gaussian_model import save_ply
from scene.lerf_labels import ensure_gt, read_gt
from scene.names import safe_stem
from scene.selections import load_selection, queries_dir, read_index

from .mapping import load_instance_model
from .query import label_root_of, scene_name

SHEET_COLUMNS = ("before", "selection", "after")
_KINDS = {"export": ".ply", "remove": "_removed.ply", "sheet": "_sheet.png"}  # output name = <stem><suffix>


def _mask(sel, n: int, device) -> torch.Tensor:
    m = sel if torch.is_tensor(sel) else torch.from_numpy(np.asarray(sel, dtype=bool))
    if tuple(m.shape) != (n,):
        raise StageError(f"a selection of shape {tuple(m.shape)} for a model of {n} Gaussians")
    return m.to(device=device, dtype=torch.bool)


def split_model(params: dict, sel) -> tuple[dict, dict]:
    """(the Gaussians where ``sel`` is True, the others), every key split the same way, order kept."""
    m = _mask(sel, params["means"].shape[0], params["means"].device)
    return {k: v[m] for k, v in params.items()}, {k: v[~m] for k, v in params.items()}


def export_selection(path, params: dict, sel, semantic: bool = True) -> Path:
    """The selected Gaussians as a 3DGS PLY (with ``semantic_*`` when ``semantic`` and present)."""
    part = split_model(params, sel)[0]
    return save_ply(path, part if semantic else _geometry(part))


def remove_selection(path, params: dict, sel, semantic: bool = False) -> Path:
    """The scene without the selected Gaussians (N - |sel| of them) as a standard 3DGS PLY."""
    rest = split_model(params, sel)[1]
    return save_ply(path, rest if semantic else _geometry(rest))


def _geometry(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "ins_feat"}


def background(cfg: Config, device) -> torch.Tensor:
    return torch.full((3,), 1.0 if cfg.data.white_background else 0.0, device=device)


@torch.no_grad()
def render_rgb(cfg: Config, params: dict, cam, bg: torch.Tensor | None = None) -> np.ndarray:
    """uint8 [H, W, 3] colour render of ``params`` at ``cam`` (the scene's background by default)."""
    device = params["means"].device
    bg = background(cfg, device) if bg is None else bg.to(device)
    out = render(_geometry(params), cam, bg=bg, return_depth=False, **cfg.renderer.kwargs())
    return (out.color.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def render_model_views(cfg: Config, params: dict, cameras, out_dir) -> list[Path]:
    """Render ``params`` in every camera -> ``<out_dir>/<image_name>.png`` (the camera's size)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{cam.image_name}.png" for cam in cameras]
    for cam, path in zip(cameras, paths):
        png_save(path, render_rgb(cfg, params, cam))
    return paths


def contact_sheet(cfg: Config, params: dict, sel, cameras, labels: bool = True, max_width: int = 480) -> np.ndarray:
    """uint8 [len(cameras) H, 3 W, 3]: per camera (a row) the whole model, the selection alone on white
    and the model without the selection, at the first camera's size (W, H), rendered smaller when W >
    ``max_width`` (a LERF-OVS view is ~988 px wide). ``labels``: the column names on the first row and
    each view's name on its first tile, in small boxes at the tile corners."""
    if not cameras:
        raise StageError("contact sheet: no views to show")
    selected, rest = split_model(params, sel)
    white = torch.ones(3, device=params["means"].device)
    W, H = int(cameras[0].width), int(cameras[0].height)
    if W > max_width:
        W, H = max_width, max(1, round(H * max_width / W))
    rows = []
    for cam in cameras:
        cam = cam if (cam.width, cam.height) == (W, H) else cam.scaled(W, H)
        rows.append(np.concatenate([render_rgb(cfg, params, cam), render_rgb(cfg, selected, cam, white),
                                    render_rgb(cfg, rest, cam)], axis=1))
    sheet = np.concatenate(rows, axis=0)
    if labels:
        sheet = _draw_labels(sheet, W, H, [c.image_name for c in cameras])
    return sheet


def _draw_labels(sheet: np.ndarray, W: int, H: int, row_names: list[str]) -> np.ndarray:
    """White text on a black box at a tile's top-left (column names, first row) or bottom-left (the
    view's name, first column); a label is clipped to its tile."""
    img = Image.fromarray(sheet)
    font = ImageFont.load_default()
    labels = [(0, j, name, False) for j, name in enumerate(SHEET_COLUMNS)]
    labels += [(i, 0, name, True) for i, name in enumerate(row_names)]
    for i, j, text, bottom in labels:
        box = (j * W, i * H, (j + 1) * W, (i + 1) * H)
        tile = img.crop(box)
        draw = ImageDraw.Draw(tile)
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        y = H - (b - t) - 4 if bottom else 0
        draw.rectangle([0, y, (r - l) + 3, y + (b - t) + 3], fill=(0, 0, 0))
        draw.text((2 - l, y + 2 - t), text, fill=(255, 255, 255), font=font)
        img.paste(tile, box[:2])
    return np.asarray(img)


def sheet_cameras(scene, labelled: dict, category: str | None = None, rows: int = 4) -> list:
    """Up to ``rows`` views for a sheet, evenly spaced over the labelled frames that show ``category``
    (``labelled``: ``{frame: {category: mask}}`` as ``scene.lerf_labels.read_gt`` gives), else over
    every labelled frame, else over every view of the scene."""
    cams = {c.image_name: c for c in scene.all_cameras}
    frames = [f for f in sorted(labelled) if f in cams and category in labelled[f]]
    frames = frames or [f for f in sorted(labelled) if f in cams] or sorted(cams, key=lambda n: cams[n].uid)
    pick = np.unique(np.linspace(0, len(frames) - 1, min(rows, len(frames))).round().astype(int))
    return [cams[frames[i]] for i in pick]


def edit_paths(queries_dir: Path, query: str, kinds) -> dict[str, Path]:
    return {k: Path(queries_dir) / f"{safe_stem(query)}{_KINDS[k]}" for k in kinds}


def check_edit_names(queries_dir: Path, queries: list[str], kinds, known: list[str]) -> None:
    """Refuse, before anything is written, an output whose name is also an output of another query of
    the run (query 'a_removed' exports ``a_removed.ply``, the name of query 'a''s removal)."""
    writes = {p: (q, k) for q in queries for k, p in edit_paths(queries_dir, q, kinds).items()}
    for other in dict.fromkeys([*known, *queries]):
        for k, p in edit_paths(queries_dir, other, _KINDS).items():
            if p in writes and writes[p][0] != other:
                q, kind = writes[p]
                raise StageError(f"{p}: the name of both the --{kind} output of query {q!r} and the --{k} output "
                                 f"of query {other!r}: rename one of the two queries")


def check_query_edits(run_dir: Path, queries: list[str], kinds) -> None:
    """``check_edit_names`` against the queries of the run's index (call it before the queries run)."""
    known = list(read_index(run_dir, missing_ok=True).get("queries", {}))
    check_edit_names(queries_dir(run_dir), queries, kinds, known)


def write_query_edits(cfg: Config, run_dir: Path, queries: list[str], kinds, device) -> dict[str, dict[str, Path]]:
    """The ``kinds`` (``export``, ``remove``, ``sheet``) of each query of the run, from its saved
    selection and the instance model -> ``{query: {kind: path}}``."""
    qdir = queries_dir(run_dir)
    check_query_edits(run_dir, queries, kinds)
    params = load_instance_model(run_dir, device)
    if "sheet" in kinds:
        scene = load_scene_from_config(cfg.data, cfg.rgb.holdout_offset)
        try:
            labelled = read_gt(ensure_gt(label_root_of(cfg), scene_name(cfg)))
        except FileNotFoundError:  # a scene without labels: evenly spaced views
            labelled = {}
    out = {}
    for q in queries:
        sel = load_selection(run_dir, q, params["means"].shape[0])
        out[q] = paths = edit_paths(qdir, q, kinds)
        if "export" in paths:
            export_selection(paths["export"], params, sel)
        if "remove" in paths:
            remove_selection(paths["remove"], params, sel)
        if "sheet" in paths:
            png_save(paths["sheet"], contact_sheet(cfg, params, sel, sheet_cameras(scene, labelled, q)))
    return out


def claim_render_dir(out_dir: Path, ply: Path) -> None:
    """``renders_edited/<stem>/`` belongs to one PLY (recorded in its ``source.json``): renders of
    another PLY of the same name (an rgb and an instance ``point_cloud.ply``) are refused, not mixed."""
    rec, sha = Path(out_dir) / "source.json", file_sha256(ply)
    if rec.is_file():
        old = json.loads(rec.read_text())
        if old.get("ply") != str(Path(ply).resolve()) and old.get("sha256") != sha:
            raise StageError(f"{out_dir}: holds the renders of {old.get('ply')}, another PLY named "
                             f"{Path(ply).name}: delete that folder, or render a copy of {ply} with another name")
    write_json(rec, {"ply": str(Path(ply).resolve()), "sha256": sha})
