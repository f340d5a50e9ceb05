"""A generated ScanNet-shaped room, laid out as OpenGaussian's ScanNet data (issue 17).

``python -m preprocess.synthetic.room --root R --scene scene0000_00 --seed 0`` writes::

    <root>/<scene>/color/<i>.png                      views of a walkthrough, i = 0, 1, ... (ScanNet frame ids)
    <root>/<scene>/transforms_train.json, transforms_test.json   Blender / NeRF cameras (fl_x, fl_y, cx, cy, w, h;
                                                      4x4 camera-to-world, OpenGL axes); every 8th frame is a test frame
    <root>/<scene>/points3d.ply                       the "mesh vertices" (x y z red green blue) on floor,
                                                      walls and furniture
    <root>/<scene>/<scene>_vh_clean_2.labels.ply      the same vertices, same order, + ``label`` (NYU40 id; ScanNet v2's
                                                      vertex layout x y z red green blue alpha label)
    <root>/<scene>/language_features/<i>_s.npy, _f.npy   SAM-like 4-level masks + CLIP-like vectors (LangSplat format)
    <root>/<scene>/text_features.json                 {phrase: vector}: the 19 NYU40 class texts + canonical negatives
    <root>/<scene>/synthetic.json                     generator, version, seed, preset, config, text_space

Read back by ``scene.blender.load_blender_scene`` (through ``scene.dataset.load_scene``) and scored by
``scene.scannet``. The geometry is ``room_layout.py``'s; views, masks and vectors are the tabletop
generator's own machinery (``render.render_view``, ``masks.build_language_features`` with its
``NoiseKnobs``, ``masks.VectorBank`` of ``scene.encoders.HashTextEncoder`` vectors of the NYU40 class
texts), so the ``hash`` text encoder on the class names ranks the mask vectors as CLIP would.

Vertices are sampled at pixel-centre hits of the views (a scan's mesh covers what its frames saw),
distinct pixels per view, ``n_points`` in all, with the view's rendered colour; a vertex's label is the
class of the surface it lies on. Everything is deterministic in (seed, preset, overrides).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from scene.encoders import HashTextEncoder, save_text_table
from scene.grounding import CANONICAL_NEGATIVES
from scene.language_features import save_features
from scene.scannet import LABELS_SUFFIX, NYU40_NAMES

from .config import PRESETS, NoiseKnobs
from .generate import MANIFEST, SceneExistsError, _identity, text_space
from .masks import VectorBank, build_language_features
from .render import render_view
from .room_layout import build_room as _build_layout, nyu40_buffer, walkthrough_cameras

ROOM_VERSION = "1"
GENERATOR = "preprocess.synthetic.room"
STREAM_LAYOUT, STREAM_CAMERAS, STREAM_POINTS = 0x71, 0x72, 0x73
NOISE_PRESETS = ("clean", "default", "hard")   # the noise knobs of config.PRESETS


@dataclass(frozen=True)
class RoomConfig:
    n_views: int = 30               # frames of the walkthrough (color/0.png ..)
    width: int = 96                 # image width in pixels
    height: int = 72                # image height in pixels (4:3 like ScanNet's colour frames)
    supersample: int = 2            # s x s colour samples per pixel (ids and vertices from the pixel centre)
    n_points: int = 4000            # mesh vertices (= Gaussians of a frozen-points run)
    fov_deg: float = 60.0           # horizontal field of view (ScanNet's colour camera: ~58 degrees)
    cam_height: float = 1.4         # camera height above the floor (metres; a hand-held sensor)
    loop_radius: float = 1.0        # radius (across y) of the camera loop around the room centre (metres)
    pitch_deg: float = 16.0         # how far the cameras look down (degrees)
    test_every: int = 8             # frames i with i % test_every == 0 go to transforms_test.json
    shadows: bool = True            # shadow rays towards the light
    min_mask_frac: float = 0.0006   # "SAM" masks smaller than this image fraction are dropped
    text_dim: int = 512             # width of the "CLIP" space
    noise: NoiseKnobs = field(default_factory=NoiseKnobs)

    def validate(self) -> None:
        for k, lo in (("n_views", 1), ("width", 8), ("height", 8), ("supersample", 1), ("n_points", 1),
                      ("test_every", 2), ("text_dim", 16)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{k} must be an integer >= {lo}, got {v!r}")
        for k, lo, hi in (("fov_deg", 10, 150), ("cam_height", 0.3, 2.4), ("loop_radius", 0, 1.8),
                          ("pitch_deg", -30, 80), ("min_mask_frac", 0, 1)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"{k} must be a number in [{lo}, {hi}], got {v!r}")
        if self.n_points > self.n_views * self.width * self.height // 2:
            raise ValueError(f"n_points={self.n_points} is more than half the pixels of {self.n_views} "
                             f"{self.width}x{self.height} views; use more or larger views")
        if self.supersample > 8:
            raise ValueError(f"supersample must be <= 8, got {self.supersample}")
        self.noise.validate()


def make_room_config(preset: str = "default", overrides: Optional[dict] = None) -> RoomConfig:
    """RoomConfig with the noise knobs of ``config.PRESETS[preset]`` and ``overrides`` applied:
    keys are RoomConfig fields or ``noise.<knob>``; unknown keys / presets -> ValueError."""
    if preset not in NOISE_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {list(NOISE_PRESETS)}")
    cfg = RoomConfig(noise=PRESETS[preset].noise)
    room_keys = {f.name for f in fields(RoomConfig)} - {"noise"}
    noise_keys = {f.name for f in fields(NoiseKnobs)}
    r_upd, n_upd = {}, {}
    for k, v in (overrides or {}).items():
        kk = k[len("noise."):] if k.startswith("noise.") else k
        if k in room_keys:
            default = getattr(cfg, k)
        elif kk in noise_keys:
            default = getattr(cfg.noise, kk)
        else:
            raise ValueError(f"unknown room setting {k!r}; known: {sorted(room_keys)} and "
                             f"noise.{{{', '.join(sorted(noise_keys))}}}")
        if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)   # 2 -> 2.0: a stable scene identity
        (r_upd if k in room_keys else n_upd)[k if k in room_keys else kk] = v
    cfg = replace(cfg, noise=replace(cfg.noise, **n_upd), **r_upd)
    cfg.validate()
    return cfg


def build_room(seed: int, cfg: RoomConfig):
    """(layout, cameras, room size (W, D)) of room ``seed``: ``room_layout.build_room`` and
    ``walkthrough_cameras`` on generators seeded with (seed, stream)."""
    layout, size = _build_layout(np.random.default_rng([int(seed), STREAM_LAYOUT]))
    cams = walkthrough_cameras(np.random.default_rng([int(seed), STREAM_CAMERAS]), cfg.n_views, cfg.width,
                               cfg.height, cfg.fov_deg, cfg.cam_height, cfg.loop_radius, cfg.pitch_deg, size)
    return layout, cams, size


def manifest(seed: int, preset: str, cfg: RoomConfig) -> dict:
    return {"generator": GENERATOR, "version": ROOM_VERSION, "seed": int(seed), "preset": preset,
            "config": asdict(cfg)}


def room_status(scene_dir: Path, want: dict) -> str:
    """'missing' | 'up_to_date' | 'different' (``generate.scene_status`` without the label folder)."""
    if not scene_dir.exists():
        return "missing"
    try:
        have = json.loads((scene_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "different"
    return "up_to_date" if have.get("complete") and _identity(have) == _identity(want) else "different"


def generate_room(root, name: str = "scene0000_00", seed: int = 0, preset: str = "default",
                  overrides: Optional[dict] = None, force: bool = False, progress: bool = True,
                  log=print) -> Path:
    """Writes the room ``<root>/<name>/``; returns that folder. Like ``generate.generate_scene``:
    the same scene already there (version, seed, preset, config) is left alone ("up to date"),
    anything else there is ``SceneExistsError`` unless ``force``; written under a temporary name."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"scene name must be a plain folder name, got {name!r}")
    if not re.fullmatch(r"scene\d{4}_\d{2}", name):
        log(f"note: {name!r} is not a ScanNet scene name (sceneXXXX_YY)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    cfg = make_room_config(preset, overrides)
    root = Path(root)
    scene_dir, want = root / name, manifest(seed, preset, cfg)
    status = room_status(scene_dir, want)
    if status == "up_to_date" and not force:
        log(f"{scene_dir}: up to date (seed {seed}, preset {preset})")
        return scene_dir
    if status != "missing" and not force:
        raise SceneExistsError(f"{scene_dir} already holds a different scene or other data; pass --force "
                               f"to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        t0 = time.time()
        info = _write_room(tmp, name, seed, cfg, want, progress)
        if scene_dir.is_dir() and not scene_dir.is_symlink():
            shutil.rmtree(scene_dir)
        elif scene_dir.exists() or scene_dir.is_symlink():
            scene_dir.unlink()
        os.replace(tmp, scene_dir)
        log(f"{scene_dir}: {cfg.n_views} views {cfg.width}x{cfg.height}, {len(info['objects'])} objects, "
            f"{info['n_points']} vertices; {time.time() - t0:.1f} s")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return scene_dir


def _c2w_opengl(cam) -> list:
    """4x4 camera-to-world in OpenGL axes (y up, looking along -z) of a world-to-camera (R, t) in
    OpenCV axes: the inverse of ``scene.blender.opengl_c2w_to_w2c``."""
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = cam.R.T, -cam.R.T @ cam.t
    m[:3, 1:3] *= -1
    return [[float(x) for x in row] for row in m]


def _write_transforms(path: Path, cams: list) -> None:
    K = cams[0].K
    meta = {"fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "w": cams[0].width, "h": cams[0].height,
            "frames": [{"file_path": f"color/{c.name}.png", "transform_matrix": _c2w_opengl(c)} for c in cams]}
    path.write_text(json.dumps(meta, indent=1), encoding="utf-8")


def write_vertex_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, label: Optional[np.ndarray] = None) -> None:
    """Binary PLY with one ``vertex`` element: x y z (float32) red green blue (uint8) and, with
    ``label`` [P], alpha (uint8, 255) + label (uint16): ScanNet v2's ``_vh_clean_2.labels.ply`` vertex."""
    from plyfile import PlyData, PlyElement

    cols = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if label is not None:
        cols += [("alpha", "u1"), ("label", "u2")]
    v = np.empty(len(xyz), dtype=cols)
    for k, a in zip("xyz", xyz.T):
        v[k] = a
    for k, a in zip(("red", "green", "blue"), rgb.T):
        v[k] = a
    if label is not None:
        v["alpha"], v["label"] = 255, label
    PlyData([PlyElement.describe(v, "vertex")], text=False, byte_order="<").write(str(path))


def _quota(n: int, k: int) -> list[int]:
    return [n // k + (i < n % k) for i in range(k)]


def _write_room(scene_dir: Path, name: str, seed: int, cfg: RoomConfig, want: dict, progress: bool) -> dict:
    layout, cams, size = build_room(seed, cfg)
    encoder = HashTextEncoder(dim=cfg.text_dim)
    bank = VectorBank.build(layout, encoder)
    min_mask = max(int(round(cfg.min_mask_frac * cfg.width * cfg.height)), 4)
    for d in ("color", "language_features"):
        (scene_dir / d).mkdir(parents=True, exist_ok=True)
    xyz, rgb, lab = [], [], []
    for vi, (cam, quota) in enumerate(tqdm(list(zip(cams, _quota(cfg.n_points, cfg.n_views))),
                                           desc=f"room {name}", disable=not progress, unit="view")):
        view = render_view(layout, cam, cfg.supersample, cfg.shadows)
        Image.fromarray(view.image).save(scene_dir / "color" / f"{cam.name}.png")
        s, f = build_language_features(view, layout, bank, cfg.noise, seed, vi, min_mask)
        save_features(scene_dir / "language_features", cam.name, s, f)
        nyu = nyu40_buffer(layout, view.obj, view.region).ravel()
        surf = np.flatnonzero(nyu > 0)  # pixels on a labelled surface (not sky)
        if quota > surf.size:
            raise ValueError(f"view {cam.name} shows only {surf.size} surface pixels, {quota} vertices are "
                             f"needed; lower n_points or raise the resolution")
        idx = np.sort(np.random.default_rng([int(seed), STREAM_POINTS, vi]).choice(surf, quota, replace=False))
        xyz.append(view.point.reshape(-1, 3)[idx])
        rgb.append(view.image.reshape(-1, 3)[idx])
        lab.append(nyu[idx])
    xyz, rgb, lab = np.concatenate(xyz).astype(np.float32), np.concatenate(rgb), np.concatenate(lab)
    write_vertex_ply(scene_dir / "points3d.ply", xyz, rgb)
    write_vertex_ply(scene_dir / f"{name}{LABELS_SUFFIX}", xyz, rgb, lab)
    test = [c for i, c in enumerate(cams) if i % cfg.test_every == 0]
    _write_transforms(scene_dir / "transforms_train.json", [c for i, c in enumerate(cams) if i % cfg.test_every])
    _write_transforms(scene_dir / "transforms_test.json", test)
    phrases = list(dict.fromkeys(list(NYU40_NAMES.values()) + list(CANONICAL_NEGATIVES)))
    save_text_table(scene_dir / "text_features.json", dict(zip(phrases, encoder.encode_numpy(phrases))))
    counts = {NYU40_NAMES[int(c)]: int(n) for c, n in zip(*np.unique(lab, return_counts=True))}
    info = dict(want, scene=name, objects=[o.name for o in layout.objects], room_size=[round(x, 6) for x in size],
                n_points=int(len(xyz)), vertex_labels=counts, test_frames=[c.name for c in test],
                text_space=text_space(encoder), complete=True)
    (scene_dir / MANIFEST).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    knobs = ", ".join(f.name for f in fields(NoiseKnobs))
    d = RoomConfig()
    p = argparse.ArgumentParser(
        prog="python -m preprocess.synthetic.room",
        description="Generate a ScanNet-shaped room in OpenGaussian's ScanNet layout (color/, transforms_*.json, "
                    "points3d.ply, <scene>_vh_clean_2.labels.ply with NYU40 labels, LangSplat language "
                    "features) with the synthetic scenes' analytic ray caster.")
    p.add_argument("--root", required=True, help="dataset root; writes <root>/<scene>/")
    p.add_argument("--scene", default="scene0000_00", help="scene folder name, ScanNet style (default scene0000_00)")
    p.add_argument("--seed", type=int, default=0, help="random seed (integer >= 0); the room is a deterministic "
                   "function of seed + preset + settings (default 0)")
    p.add_argument("--preset", default="default", choices=NOISE_PRESETS,
                   help="mask / CLIP noise knobs of the synthetic presets: clean (none), default (realistic), "
                        "hard (strong, with the failure modes of real CLIP) (default: default)")
    p.add_argument("--views", type=int, help=f"number of frames of the walkthrough (default {d.n_views})")
    p.add_argument("--width", type=int, help=f"image width in pixels (default {d.width})")
    p.add_argument("--height", type=int, help=f"image height in pixels (default {d.height})")
    p.add_argument("--points", type=int,
                   help=f"mesh vertices in points3d.ply and the labels PLY (default {d.n_points})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any RoomConfig field (fov_deg, cam_height, loop_radius, pitch_deg, test_every, "
                        f"supersample, shadows, ...) or noise knob (noise.KNOB=VALUE), repeatable; knobs: {knobs}")
    p.add_argument("--force", action="store_true", help="overwrite the scene folder even if it holds a different scene")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    from arguments.cli import run_cli

    from .__main__ import _parse_value

    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("n_views", args.views), ("width", args.width), ("height", args.height),
                                   ("n_points", args.points)) if v is not None}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _parse_value(v.strip())

    def generate(args) -> int:  # bad settings, a folder holding another scene -> one line, exit 2
        generate_room(args.root, args.scene, args.seed, args.preset, overrides, force=args.force,
                      progress=not args.quiet)
        return 0

    return run_cli(generate, args)


if __name__ == "__main__":
    sys.exit(main())
