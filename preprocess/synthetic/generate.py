"""Writes one synthetic LERF-OVS-shaped scene (see the package docstring for the layout).

Everything is deterministic in (seed, config): the layout, cameras and labelled frames come from
generators seeded with (seed, stream), each view's masks, vectors and point samples from
(seed, stream, view index), so views do not depend on the order they are produced in.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from scene.encoders import HashTextEncoder, save_text_table
from scene.grounding import CANONICAL_NEGATIVES
from scene.language_features import save_features

from .config import GENERATOR_VERSION, SceneConfig, make_config
from .labels import choose_labelled_views, write_frame_labels
from .layout import SyntheticLayout, ViewCamera, build_layout, orbit_cameras
from .masks import VectorBank, build_language_features
from .points import sample_view_points, write_colmap
from .render import render_view

STREAM_LAYOUT, STREAM_CAMERAS, STREAM_LABELS, STREAM_POINTS, STREAM_COLMAP = 0x11, 0x22, 0x33, 0x44, 0x55
STREAM_NAMES = 0x66  # object names when noise.shared_names > 0 (the layout stream is left as it was)
MANIFEST = "synthetic.json"


class SceneExistsError(FileExistsError):
    """The output folder holds something other than the requested synthetic scene."""


def build_scene(seed: int, cfg: SceneConfig) -> tuple[SyntheticLayout, list[ViewCamera]]:
    """The layout (objects + background primitives) and the cameras of scene ``seed``."""
    layout = build_layout(np.random.default_rng([int(seed), STREAM_LAYOUT]), cfg.n_objects,
                          cfg.layout_radius, cfg.touch_prob, cfg.noise.shared_names,
                          np.random.default_rng([int(seed), STREAM_NAMES]))
    cams = orbit_cameras(np.random.default_rng([int(seed), STREAM_CAMERAS]), cfg.n_views, cfg.width,
                         cfg.height, cfg.fov_deg, cfg.distance, (cfg.elev_min_deg, cfg.elev_max_deg))
    return layout, cams


def label_frame_indices(seed: int, cfg: SceneConfig) -> list[int]:
    return choose_labelled_views(cfg.n_views, cfg.n_labelled, np.random.default_rng([int(seed), STREAM_LABELS]))


def manifest(seed: int, preset: str, cfg: SceneConfig) -> dict:
    return {"generator": "preprocess.synthetic", "version": GENERATOR_VERSION, "seed": int(seed),
            "preset": preset, "config": cfg.to_dict()}


def text_space(encoder: HashTextEncoder) -> dict:
    """The record of the space the scene's "CLIP" vectors live in (``synthetic.json["text_space"]``):
    read by ``scene.provenance`` to pick the query text encoder. Not part of the scene identity
    (``_identity``): scenes written before the field existed are still up to date, and
    ``scene.provenance`` treats a ``synthetic.json`` without it as this same hash space."""
    return {"encoder": "hash", "dim": int(encoder.dim), "shared": float(encoder.shared),
            "module": "scene.encoders.HashTextEncoder"}


def _identity(m: dict) -> tuple:
    return (m.get("generator"), m.get("version"), m.get("seed"), m.get("preset"),
            json.dumps(m.get("config"), sort_keys=True))


def scene_status(root: Path, name: str, want: dict) -> str:
    """'missing' | 'up_to_date' | 'different' (with nothing to tell which) for the target folders."""
    scene_dir, label_dir = root / name, root / "label" / name
    if not scene_dir.exists() and not label_dir.exists():
        return "missing"
    try:
        with open(scene_dir / MANIFEST, "r", encoding="utf-8") as fh:
            have = json.load(fh)
    except (OSError, ValueError):
        return "different"
    if have.get("complete") and label_dir.is_dir() and _identity(have) == _identity(want):
        return "up_to_date"
    return "different"


def generate_scene(root, name: str, seed: int, preset: str = "default", overrides: Optional[dict] = None,
                   force: bool = False, progress: bool = True, log=print, workers: int = 1) -> Path:
    """Generates ``<root>/<name>/`` and ``<root>/label/<name>/``; returns the scene folder.

    ``overrides``: SceneConfig fields / noise knobs (see ``config.make_config``). If the target
    holds the same scene (same version, seed, preset, config), nothing is done ("up to date");
    if it holds anything else, ``SceneExistsError`` unless ``force``. ``workers`` > 1 renders the
    views in that many processes (0 = all CPUs); the files are the same bytes as with 1 worker,
    since every view depends only on (seed, view index)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    workers = workers or (os.cpu_count() or 1)
    if not isinstance(name, str) or not name or name in (".", "..", "label") or "/" in name or "\\" in name:
        raise ValueError(f"scene name must be a plain folder name (not 'label'), got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    cfg = make_config(preset, overrides)
    root = Path(root)
    want = manifest(seed, preset, cfg)
    status = scene_status(root, name, want)
    scene_dir, label_dir = root / name, root / "label" / name
    if status == "up_to_date" and not force:
        log(f"{scene_dir}: up to date (seed {seed}, preset {preset})")
        return scene_dir
    if status != "missing" and not force:
        raise SceneExistsError(f"{scene_dir} (or {label_dir}) already holds a different scene or other "
                               f"data; pass --force to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        t0 = time.time()
        info = _write_scene(tmp / "scene", tmp / "label", name, seed, cfg, want, progress, workers)
        for d in (scene_dir, label_dir):
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            elif d.exists() or d.is_symlink():
                d.unlink()
        label_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "label", label_dir)
        os.replace(tmp / "scene", scene_dir)
        log(f"{scene_dir}: {cfg.n_views} views {cfg.width}x{cfg.height}, {len(info['objects'])} objects, "
            f"{info['n_points']} points, {len(info['queries'])} queries in {len(info['frames'])} labelled "
            f"frames; {time.time() - t0:.1f} s")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return scene_dir


_JOB: dict = {}  # per-process state of the view jobs (set once per worker)


def _init_job(job: dict) -> None:
    _JOB.clear()
    _JOB.update(job)


def _view_job(vi: int):
    """Renders and writes view ``vi``; returns (vi, point samples, labelled categories or None)."""
    j = _JOB
    cfg, cam, seed = j["cfg"], j["cams"][vi], j["seed"]
    scene_dir, label_dir = j["scene_dir"], j["label_dir"]
    view = render_view(j["layout"], cam, cfg.supersample, cfg.shadows)
    img_file = f"{cam.name}.png"
    Image.fromarray(view.image).save(scene_dir / "images" / img_file)
    s, f = build_language_features(view, j["layout"], j["bank"], cfg.noise, seed, vi, j["min_mask"])
    save_features(scene_dir / "language_features", cam.name, s, f)
    pts = None
    if j["per_view"]:
        x, c, _, _ = sample_view_points(view, j["per_view"], np.random.default_rng([int(seed), STREAM_POINTS, vi]))
        pts = (x, c)
    cats = None
    if vi in j["labelled"]:
        cats = write_frame_labels(label_dir, cam.name, img_file, view.obj, j["names"], j["min_label"])
        shutil.copyfile(scene_dir / "images" / img_file, label_dir / img_file)
    return vi, pts, cats


def _run_views(job: dict, n_views: int, workers: int, progress: bool, desc: str) -> list:
    bar = tqdm(total=n_views, desc=desc, disable=not progress, unit="view")
    results = []
    try:
        if workers <= 1:
            _init_job(job)
            for vi in range(n_views):
                results.append(_view_job(vi))
                bar.update()
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers, initializer=_init_job, initargs=(job,)) as pool:
                for r in pool.imap_unordered(_view_job, range(n_views)):
                    results.append(r)
                    bar.update()
    finally:
        bar.close()
    return sorted(results, key=lambda r: r[0])


def _write_scene(scene_dir: Path, label_dir: Path, name: str, seed: int, cfg: SceneConfig, want: dict,
                 progress: bool, workers: int = 1) -> dict:
    layout, cams = build_scene(seed, cfg)
    names = [o.name for o in layout.objects]
    encoder = HashTextEncoder(dim=cfg.text_dim)
    HW = cfg.width * cfg.height
    per_view = int(np.ceil(cfg.n_points / cfg.n_views * 1.15)) if cfg.n_points else 0
    for d in (scene_dir / "images", scene_dir / "language_features", label_dir):
        d.mkdir(parents=True, exist_ok=True)
    job = dict(cfg=cfg, cams=cams, seed=int(seed), layout=layout, names=names,
               bank=VectorBank.build(layout, encoder), labelled=set(label_frame_indices(seed, cfg)),
               min_mask=max(int(round(cfg.min_mask_frac * HW)), 4),
               min_label=max(int(round(cfg.label_min_frac * HW)), 20),
               per_view=per_view, scene_dir=scene_dir, label_dir=label_dir)
    results = _run_views(job, cfg.n_views, workers, progress, f"synthetic {name}")
    X = [r[1][0] for r in results if r[1] is not None]
    rgb = [r[1][1] for r in results if r[1] is not None]
    src = [np.full(len(r[1][0]), r[0]) for r in results if r[1] is not None]
    frames = {cams[vi].name: cats for vi, _, cats in results if cats is not None}
    n_points = 0
    if per_view:
        points, _ = write_colmap(scene_dir / "sparse" / "0", layout, cams, np.concatenate(X),
                                 np.concatenate(rgb), np.concatenate(src), cfg.point_noise,
                                 cfg.outlier_frac, np.random.default_rng([int(seed), STREAM_COLMAP]))
        n_points = len(points)
    else:
        write_colmap(scene_dir / "sparse" / "0", layout, cams, np.zeros((0, 3)), np.zeros((0, 3), np.uint8),
                     np.zeros(0, np.int64), 0.0, 0.0, np.random.default_rng(0))
    queries = list(dict.fromkeys(c for cats in frames.values() for c in cats))
    with open(scene_dir / "queries.json", "w", encoding="utf-8") as fh:
        json.dump({"queries": queries, "frames": frames, "negatives": list(CANONICAL_NEGATIVES),
                   "text_encoder": "hash", "label_dir": f"../label/{name}"}, fh, indent=1)
    phrases = list(dict.fromkeys(queries + names + list(CANONICAL_NEGATIVES)))
    save_text_table(scene_dir / "text_features.json", dict(zip(phrases, encoder.encode_numpy(phrases))))
    info = dict(want, scene=name, objects=names, queries=queries, frames=frames, n_points=n_points,
                text_space=text_space(encoder), complete=True)
    with open(scene_dir / MANIFEST, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=1)
    return info
