"""A ScanNet-like room for ``room.py``: floor, four walls and NYU40 furniture built from boxes, and a
hand-held walkthrough of cameras inside it.

World frame: z up, the floor at z = 0, the room centred on the origin, walls at x = ±W/2 and
y = ±D/2 (their inner faces). Floor and walls are background regions of ``layout.REGION_NAMES``
(2 "floor", 3 "wall"): the mask generator gives them region masks with the region's vector, as
it does for the tabletop scenes. Every piece of furniture is a ``layout.SceneObject`` named by its
NYU40 class text (``scene.scannet.NYU40_NAMES``), built from ``layout.Part`` boxes in an object
frame (base on the floor, back towards +y, front towards -y), so multi-box pieces get part masks
at the s / m levels. Door, window and picture are thin boxes just in front of a wall.

The plan is fixed (a studio flat: sofa, coffee table and picture on the north wall, bed, cabinet
and desk with its chair on the south wall, door and refrigerator on the east wall, bookshelf and a
second chair on the west side); the seed jitters the room size, positions, yaws and colours.
"""
from __future__ import annotations

import numpy as np

from scene.cameras import intrinsics, look_at
from scene.scannet import NYU40_NAMES

from .layout import (COLORS, SceneObject, SyntheticLayout, ViewCamera, _P, _dim, _footprint, _main_shape, _rz,
                     place_parts)
from .raycast import Primitive

REGION_FLOOR, REGION_WALL = 2, 3              # layout.REGION_NAMES: 2 "floor", 3 "wall"
REGION_NYU40 = {REGION_FLOOR: 2, REGION_WALL: 1}  # NYU40: floor 2, wall 1
NYU40_ID = {name: i for i, name in NYU40_NAMES.items()}
WALL_H, WALL_T = 2.6, 0.1                     # wall height and thickness (metres)
LIGHT = (0.3, -0.25, 0.92)                    # towards the light: mostly from above (no ceiling)

FABRIC = ("blue", "grey", "green", "brown", "purple", "dark")   # COLORS keys the seed picks from
WOODS = ("wood", "brown", "white", "dark")


# ---- furniture: builder(colour) -> parts (object frame, metres; back at +y) -----------------
def _bed(c):
    w = COLORS["wood"]
    return [_P("box", (0.8, 1.0, 0.15), (0, 0, 0.15), w, "frame"),
            _P("box", (0.8, 0.04, 0.45), (0, 0.98, 0.45), _dim(w, 0.8), "headboard"),
            _P("box", (0.76, 0.94, 0.1), (0, -0.04, 0.4), c, "mattress", 1),
            _P("box", (0.3, 0.14, 0.06), (-0.36, 0.74, 0.56), COLORS["white"], "pillow", 1),
            _P("box", (0.3, 0.14, 0.06), (0.36, 0.74, 0.56), COLORS["white"], "pillow", 1)]


def _chair(c):
    legs = [_P("box", (0.02, 0.02, 0.22), (sx * 0.2, sy * 0.2, 0.22), _dim(c, 0.7), "leg")
            for sx in (-1, 1) for sy in (-1, 1)]
    return legs + [_P("box", (0.23, 0.23, 0.03), (0, 0, 0.47), c, "seat"),
                   _P("box", (0.23, 0.025, 0.22), (0, 0.21, 0.72), c, "back", 1)]


def _table(c):
    legs = [_P("box", (0.025, 0.025, 0.21), (sx * 0.47, sy * 0.27, 0.21), _dim(c, 0.7), "leg", 1)
            for sx in (-1, 1) for sy in (-1, 1)]
    return [_P("box", (0.52, 0.32, 0.025), (0, 0, 0.445), c, "top", texture="checker",
               color2=_dim(c, 0.9), tex_scale=0.12)] + legs


def _desk(c):
    return [_P("box", (0.6, 0.3, 0.02), (0, 0, 0.74), c, "top"),
            _P("box", (0.02, 0.28, 0.36), (-0.57, 0, 0.36), _dim(c, 0.75), "leg", 1),
            _P("box", (0.02, 0.28, 0.36), (0.57, 0, 0.36), _dim(c, 0.75), "leg", 1),
            _P("box", (0.2, 0.27, 0.15), (0.33, 0, 0.56), _dim(c, 0.85), "drawer", 2)]


def _sofa(c):
    return [_P("box", (0.9, 0.4, 0.2), (0, -0.03, 0.2), _dim(c, 0.8), "base"),
            _P("box", (0.86, 0.34, 0.07), (0, -0.08, 0.47), c, "cushion", texture="checker",
               color2=_dim(c, 0.85), tex_scale=0.3),
            _P("box", (0.98, 0.1, 0.4), (0, 0.35, 0.4), c, "back", 1),
            _P("box", (0.08, 0.43, 0.3), (-0.95, 0, 0.3), _dim(c, 0.9), "arm", 1),
            _P("box", (0.08, 0.43, 0.3), (0.95, 0, 0.3), _dim(c, 0.9), "arm", 1)]


def _cabinet(c):
    return [_P("box", (0.4, 0.22, 0.45), (0, 0, 0.45), c, "body"),
            _P("box", (0.19, 0.012, 0.42), (-0.2, -0.23, 0.45), _dim(c, 0.8), "front", 1),
            _P("box", (0.19, 0.012, 0.42), (0.2, -0.23, 0.45), _dim(c, 0.8), "front", 1),
            _P("box", (0.012, 0.012, 0.06), (-0.04, -0.25, 0.6), COLORS["grey"], "handle", 1),
            _P("box", (0.012, 0.012, 0.06), (0.04, -0.25, 0.6), COLORS["grey"], "handle", 1)]


def _bookshelf(c):
    frame = [_P("box", (0.02, 0.17, 0.95), (sx * 0.43, 0, 0.95), c, "side") for sx in (-1, 1)]
    frame.append(_P("box", (0.45, 0.01, 0.95), (0, 0.165, 0.95), _dim(c, 0.8), "back"))
    shelves = [_P("box", (0.41, 0.16, 0.012), (0, 0, z), c, "shelf", 1) for z in (0.02, 0.48, 0.94, 1.4, 1.88)]
    books = [_P("box", (0.3, 0.11, 0.16), (-0.05 + 0.04 * k, -0.02, z + 0.172), COLORS[col], "books", 2,
                texture="checker", color2=COLORS["yellow"], tex_scale=0.06)
             for k, (z, col) in enumerate(((0.02, "red"), (0.48, "blue"), (0.94, "green")))]
    return frame + shelves + books


def _refrigerator(c):
    return [_P("box", (0.35, 0.33, 0.9), (0, 0.02, 0.9), c, "body"),
            _P("box", (0.34, 0.015, 0.3), (0, -0.325, 1.48), _dim(c, 0.92), "panel", 1),
            _P("box", (0.34, 0.015, 0.55), (0, -0.325, 0.58), _dim(c, 0.92), "panel", 1),
            _P("box", (0.015, 0.02, 0.2), (-0.28, -0.355, 1.2), COLORS["grey"], "handle", 1)]


def _door(c):
    return [_P("box", (0.45, 0.02, 1.02), (0, 0, 1.02), c, "panel"),
            _P("box", (0.05, 0.02, 0.015), (0.34, -0.04, 1.0), COLORS["grey"], "handle", 1)]


def _window(c):
    f, z = COLORS["white"], 1.45
    bars = [_P("box", (0.6, 0.03, 0.04), (0, 0, z + sz * 0.55), f, "frame") for sz in (-1, 1)]
    bars += [_P("box", (0.04, 0.03, 0.51), (sx * 0.56, 0, z), f, "frame") for sx in (-1, 1)]
    return bars + [_P("box", (0.52, 0.01, 0.51), (0, 0.01, z), (0.62, 0.78, 0.92), "glass", 1)]


def _picture(c):
    z = 1.6
    return [_P("box", (0.4, 0.015, 0.3), (0, 0, z), COLORS["dark"], "frame"),
            _P("box", (0.35, 0.02, 0.25), (0, -0.01, z), c, "canvas", 1, texture="checker",
               color2=COLORS["orange"], tex_scale=0.1)]


# ---- the plan: (class, builder, colour keys, wall, u, w, yaw, yaw jitter). Against a wall (N: y = +D/2,
# S: -D/2, E: x = +W/2, W: -W/2): u = position along it, w = half depth (the back touches the wall).
# Free-standing (wall None): (u, w) = (x, y) and the yaw; the seed jitters u, w and the yaw.
PLAN = [
    ("sofa", _sofa, FABRIC, "N", -0.9, 0.45, 0.0, 0.0),
    ("picture", _picture, ("red", "blue", "green", "purple"), "N", -0.9, 0.02, 0.0, 0.0),
    ("window", _window, ("white",), "N", 1.5, 0.04, 0.0, 0.0),
    ("table", _table, WOODS, None, -0.9, 1.0, 0.0, 0.08),
    ("bed", _bed, ("white", "blue", "pink", "yellow"), "S", 1.6, 1.02, 0.0, 0.0),
    ("cabinet", _cabinet, WOODS, "S", 0.25, 0.24, 0.0, 0.0),
    ("desk", _desk, WOODS, "S", -1.8, 0.3, 0.0, 0.0),
    ("chair", _chair, FABRIC, None, -1.8, -1.55, 0.0, 0.3),
    ("door", _door, ("wood", "white", "brown"), "E", 1.1, 0.06, 0.0, 0.0),
    ("refrigerator", _refrigerator, ("white", "grey"), "E", 0.1, 0.37, 0.0, 0.0),
    ("bookshelf", _bookshelf, WOODS, "W", 0.3, 0.18, 0.0, 0.0),
    ("chair", _chair, FABRIC, None, -2.05, 0.95, np.pi / 2, 0.3),
]
# yaw that turns the object frame's +y (its back) towards the wall
WALL_YAW = {"N": 0.0, "S": np.pi, "E": -np.pi / 2, "W": np.pi / 2}


def _wall_pose(wall, u, depth, W, D):
    """(position [2], yaw) of a piece whose back touches the inner face of ``wall``."""
    half = {"N": D / 2, "S": D / 2, "E": W / 2, "W": W / 2}[wall] - depth - 0.005
    pos = {"N": (u, half), "S": (u, -half), "E": (half, u), "W": (-half, u)}[wall]
    return np.array(pos, float), WALL_YAW[wall]


def room_background(W: float, D: float, rng: np.random.Generator) -> list[Primitive]:
    """Floor (an infinite plane at z = 0, region 2) and four wall boxes (region 3)."""
    fl = COLORS[("wood", "grey", "brown")[rng.integers(3)]]
    wall = tuple(float(x) for x in rng.uniform(0.78, 0.92, 3))
    prims = [Primitive("plane", (), (0, 0, 0), color=fl, color2=_dim(fl, 0.85), texture="checker",
                       tex_scale=0.5, region=REGION_FLOOR)]
    hx, hy, h, t = W / 2 + WALL_T, D / 2 + WALL_T, WALL_H / 2, WALL_T / 2
    walls = [((0, D / 2 + t, h), (hx, t, h)), ((0, -D / 2 - t, h), (hx, t, h)),   # N, S (centre, half sizes)
             ((W / 2 + t, 0, h), (t, hy, h)), ((-W / 2 - t, 0, h), (t, hy, h))]   # E, W
    for c, size in walls:
        prims.append(Primitive("box", size, c, color=wall, color2=_dim(wall, 0.94), texture="checker",
                               tex_scale=0.4, region=REGION_WALL))
    return prims


def build_room(rng: np.random.Generator) -> tuple[SyntheticLayout, tuple[float, float]]:
    """The room's layout (objects first, then floor and walls, as ``layout.build_layout``) and its
    size (W, D) in metres."""
    W, D = float(rng.uniform(5.6, 6.4)), float(rng.uniform(4.8, 5.4))
    objects, prims, words, groups, pobj = [], [], [], [], []
    for oi, (cls, builder, colours, wall, u, w, yaw, yaw_jit) in enumerate(PLAN):
        ckey = colours[rng.integers(len(colours))]
        parts = builder(COLORS[ckey])
        u, dw, dyaw = u + rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06), rng.uniform(-1, 1) * yaw_jit
        if wall is None:
            pos, yaw = np.array([u, w + dw]), yaw + dyaw
        else:
            pos, yaw = _wall_pose(wall, u, w, W, D)
        Rz = _rz(yaw)
        base = np.array([pos[0], pos[1], 0.0])
        obj = SceneObject(cls, parts, pos, float(yaw), _footprint(parts), color=ckey, shape=_main_shape(parts))
        place_parts(obj, oi, base, Rz, 0.0, prims, words, groups, pobj)
        objects.append(obj)
    prims += room_background(W, D, rng)
    light = np.asarray(LIGHT, float)
    return SyntheticLayout(objects, prims, words, groups, pobj, light / np.linalg.norm(light), 0.0), (W, D)


def walkthrough_cameras(rng: np.random.Generator, n_views: int, width: int, height: int, fov_deg: float,
                        cam_height: float, loop_radius: float, pitch_deg: float, size) -> list[ViewCamera]:
    """A ScanNet-like hand-held sweep: positions on a loop around the room centre (an ellipse of the
    room's aspect, ``loop_radius`` across y) at ``cam_height``, each looking across the room (at the
    furniture along the opposite walls), pitched ``pitch_deg`` down, with hand-held jitter. Frame
    names are ScanNet frame ids "0", "1", ..."""
    f = width / (2 * np.tan(np.deg2rad(fov_deg) / 2))
    K = intrinsics(f, f, width / 2, height / 2)
    a0 = rng.uniform(0, 2 * np.pi)
    cams = []
    for i in range(n_views):
        a = a0 + 2 * np.pi * i / n_views
        r = loop_radius * (1 + rng.uniform(-0.15, 0.15))
        c = np.array([r * np.cos(a) * size[0] / size[1], r * np.sin(a), cam_height + rng.normal(0, 0.04)])
        yaw = a + np.pi + rng.normal(0, 0.12)
        pitch = np.deg2rad(pitch_deg + rng.normal(0, 3.0))
        d = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)])
        R, t = look_at(c, c + d, up=(0.0, 0.0, 1.0))
        cams.append(ViewCamera(str(i), R, t, K.copy(), width, height))
    return cams


def nyu40_buffer(layout: SyntheticLayout, obj: np.ndarray, region: np.ndarray) -> np.ndarray:
    """NYU40 id [H,W] int64 of id buffers ``obj`` / ``region`` [H,W] (``render.id_buffers``): an
    object's class, 2 on the floor, 1 on a wall, 0 elsewhere (sky: rays that leave the room)."""
    cls = np.array([NYU40_ID[o.name] for o in layout.objects] + [0], dtype=np.int64)
    out = np.where(obj >= 0, cls[obj], 0)
    for reg, nyu in REGION_NYU40.items():
        out = np.where((obj < 0) & (region == reg), nyu, out)
    return out
