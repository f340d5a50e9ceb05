"""Tabletop layouts: a vocabulary of named multi-part objects, their placement, the cameras.

Every object is built from analytic primitives (``raycast.Primitive``) in an object frame with
its base at z = 0 on the table top, then yawed and moved to its place. Each part carries a part
word ("handle", "head", ...) and an m-level group (parts of one group form one "m" mask). Colour
words in the names match the rendered albedo ("red apple" is red). Background (not objects): a
round wooden table (region 1), a tiled floor (region 2), a striped wall (region 3); rays that
miss everything see the sky (region 4).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scene.cameras import intrinsics, look_at
from scene.encoders import tokenize

from .raycast import Primitive

REGION_NAMES = {1: "table", 2: "floor", 3: "wall", 4: "sky"}
TABLE_TOP = 0.0
FLOOR_Z = -0.9
WALL_R = 6.0
WALL_TOP = 3.5

COLORS = {
    "red": (0.80, 0.08, 0.07), "green": (0.30, 0.68, 0.16), "yellow": (0.96, 0.80, 0.12),
    "blue": (0.12, 0.30, 0.85), "dark": (0.13, 0.13, 0.15), "white": (0.92, 0.92, 0.90),
    "pink": (0.95, 0.55, 0.70), "orange": (0.95, 0.50, 0.08), "grey": (0.58, 0.58, 0.62),
    "brown": (0.50, 0.31, 0.15), "purple": (0.50, 0.22, 0.70), "wood": (0.72, 0.50, 0.28),
}


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _dim(c, f=0.6):
    return tuple(float(x) * f for x in c)


@dataclass
class Part:
    kind: str
    params: tuple
    offset: tuple                  # object-frame position of the primitive's local origin
    color: tuple
    word: str                      # part word for "s" masks and part vectors
    group: int = 0                 # m-level group
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))  # object-frame rotation
    texture: str = None
    color2: tuple = None
    tex_scale: float = 0.05


def _P(kind, params, offset, color, word, group=0, rot=None, **kw):
    return Part(kind, tuple(params), tuple(offset), tuple(color), word, group,
                np.eye(3) if rot is None else rot, **kw)


# ---- the vocabulary: template -> (colour variants, builder(colour) -> parts) -----------------
def _apple(c):
    r = 0.11
    return [_P("ellipsoid", (r, r, r * 0.92), (0, 0, r * 0.92), c, "fruit"),
            _P("capsule", (0.012, 0.05), (0, 0, 2 * r * 0.92 + 0.02), COLORS["brown"], "stem", 1)]


def _toy_chair(c):
    legs = [_P("box", (0.012, 0.012, 0.08), (sx * 0.1, sy * 0.1, 0.08), _dim(c, 0.8), "leg")
            for sx in (-1, 1) for sy in (-1, 1)]
    return legs + [_P("box", (0.12, 0.12, 0.015), (0, 0, 0.175), c, "seat"),
                   _P("box", (0.12, 0.015, 0.11), (0, -0.105, 0.30), c, "back", 1)]


def _coffee_mug(c):
    return [_P("frustum", (0.085, 0.085, 0.2, True), (0, 0, 0), c, "body", texture="stripes",
               color2=COLORS["blue"], tex_scale=0.04),
            _P("torus", (0.055, 0.016), (0.11, 0, 0.1), c, "handle", 1, rot=_rx(np.pi / 2))]


def _rubber_duck(c):
    return [_P("ellipsoid", (0.13, 0.095, 0.085), (0, 0, 0.085), c, "body"),
            _P("ellipsoid", (0.065, 0.065, 0.065), (0.08, 0, 0.205), c, "head", 1),
            _P("frustum", (0.028, 0.0, 0.06, True), (0.13, 0, 0.2), COLORS["orange"], "beak", 1,
               rot=_ry(np.pi / 2))]


def _toy_elephant(c):
    legs = [_P("frustum", (0.03, 0.03, 0.12, True), (sx * 0.09, sy * 0.05, 0), _dim(c, 0.85), "leg")
            for sx in (-1, 1) for sy in (-1, 1)]
    return legs + [_P("ellipsoid", (0.16, 0.1, 0.09), (0, 0, 0.19), c, "body"),
                   _P("ellipsoid", (0.075, 0.07, 0.075), (0.17, 0, 0.25), c, "head", 1),
                   _P("capsule", (0.02, 0.12), (0.25, 0, 0.17), c, "trunk", 1, rot=_ry(0.35))]


def _teapot(c):
    return [_P("ellipsoid", (0.14, 0.14, 0.11), (0, 0, 0.11), c, "body", texture="stripes",
               color2=COLORS["white"], tex_scale=0.045),
            _P("ellipsoid", (0.045, 0.045, 0.035), (0, 0, 0.225), COLORS["white"], "lid"),
            _P("capsule", (0.02, 0.13), (0.17, 0, 0.16), c, "spout", 1, rot=_ry(0.8)),
            _P("torus", (0.06, 0.016), (-0.16, 0, 0.12), c, "handle", 2, rot=_rx(np.pi / 2))]


def _pouf(c):
    return [_P("frustum", (0.15, 0.15, 0.16, True), (0, 0, 0), c, "cushion", texture="vstripes",
               color2=_dim(c, 0.75), tex_scale=8)]


def _wooden_bowl(c):
    return [_P("frustum", (0.07, 0.16, 0.09, True), (0, 0, 0), c, "bowl", texture="rings",
               color2=_dim(c, 0.8), tex_scale=0.03)]


def _ice_cream(c):
    return [_P("frustum", (0.0, 0.055, 0.15, True), (0, 0, 0), (0.85, 0.65, 0.35), "cone",
               texture="checker", color2=(0.7, 0.5, 0.25), tex_scale=0.02),
            _P("ellipsoid", (0.065, 0.065, 0.065), (0, 0, 0.19), c, "scoop", 1)]


def _rubiks_cube(c):
    h = 0.075
    return [_P("box", (h, h, h), (0, 0, h), c, "cube", texture="faces", tex_scale=2 * h / 3)]


def _pumpkin(c):
    return [_P("ellipsoid", (0.14, 0.14, 0.1), (0, 0, 0.1), c, "body", texture="vstripes",
               color2=_dim(c, 0.75), tex_scale=10),
            _P("capsule", (0.015, 0.05), (0, 0, 0.22), COLORS["green"], "stem", 1)]


def _stuffed_bear(c):
    return [_P("ellipsoid", (0.11, 0.095, 0.12), (0, 0, 0.12), c, "body"),
            _P("ellipsoid", (0.08, 0.08, 0.075), (0, 0, 0.3), c, "head", 1),
            _P("ellipsoid", (0.03, 0.02, 0.03), (0, 0.06, 0.37), _dim(c, 0.7), "ear", 1),
            _P("ellipsoid", (0.03, 0.02, 0.03), (0, -0.06, 0.37), _dim(c, 0.7), "ear", 1),
            _P("ellipsoid", (0.02, 0.02, 0.02), (0.075, 0, 0.3), COLORS["dark"], "nose", 1)]


def _cup(c):
    return [_P("frustum", (0.045, 0.06, 0.12, True), (0, 0, 0), c, "cup")]


def _bottle(c):
    return [_P("frustum", (0.05, 0.05, 0.18, True), (0, 0, 0), c, "body"),
            _P("frustum", (0.05, 0.02, 0.07, True), (0, 0, 0.18), c, "neck", 1),
            _P("frustum", (0.022, 0.022, 0.03, True), (0, 0, 0.25), COLORS["red"], "cap", 1)]


def _tennis_ball(c):
    return [_P("ellipsoid", (0.05, 0.05, 0.05), (0, 0, 0.05), c, "ball")]


def _toy_car(c):
    wheels = [_P("torus", (0.03, 0.018), (sx * 0.09, sy * 0.075, 0.048), COLORS["dark"], "wheel", 1,
                 rot=_rx(np.pi / 2)) for sx in (-1, 1) for sy in (-1, 1)]
    return [_P("box", (0.14, 0.065, 0.04), (0, 0, 0.085), c, "body"),
            _P("box", (0.07, 0.055, 0.035), (-0.02, 0, 0.16), COLORS["white"], "roof")] + wheels


def _ketchup(c):
    return [_P("capsule", (0.045, 0.13), (0, 0, 0.11), c, "bottle"),
            _P("frustum", (0.025, 0.025, 0.035, True), (0, 0, 0.215), COLORS["white"], "cap", 1)]


def _egg(c):
    return [_P("ellipsoid", (0.045, 0.045, 0.062), (0, 0, 0.062), c, "egg")]


def _cookie_bag(c):
    return [_P("box", (0.13, 0.05, 0.1), (0, 0, 0.1), c, "bag", texture="checker",
               color2=(0.95, 0.88, 0.7), tex_scale=0.04)]


def _plate(c):
    return [_P("frustum", (0.13, 0.16, 0.018, True), (0, 0, 0), c, "plate", texture="rings",
               color2=(0.8, 0.8, 0.8), tex_scale=0.05)]


# name pattern, colour variants (colour word -> albedo key), builder
VOCAB = [
    ("{} apple", ("red", "green", "yellow"), _apple),
    ("{} toy chair", ("red", "green", "blue"), _toy_chair),
    ("{} cup", ("red", "dark", "blue"), _cup),
    ("{} teapot", ("blue", "white"), _teapot),
    ("{} pouf", ("yellow", "pink"), _pouf),
    ("coffee mug", ("white",), _coffee_mug),
    ("rubber duck", ("yellow",), _rubber_duck),
    ("toy elephant", ("grey",), _toy_elephant),
    ("wooden bowl", ("wood",), _wooden_bowl),
    ("pink ice cream", ("pink",), _ice_cream),
    ("rubiks cube", ("white",), _rubiks_cube),
    ("orange pumpkin", ("orange",), _pumpkin),
    ("stuffed bear", ("brown",), _stuffed_bear),
    ("green bottle", ("green",), _bottle),
    ("tennis ball", ("yellow",), _tennis_ball),
    ("{} toy car", ("blue", "red"), _toy_car),
    ("ketchup bottle", ("red",), _ketchup),
    ("egg", ("white",), _egg),
    ("bag of cookies", ("brown",), _cookie_bag),
    ("white plate", ("white",), _plate),
]
SHARED_WORD_TEMPLATES = (0, 1, 2)   # apples, toy chairs, cups: two colours of one are always drawn


def vocabulary_size() -> int:
    return sum(len(cols) for _, cols, _ in VOCAB)


@dataclass
class SceneObject:
    name: str
    parts: list                    # [Part]
    position: np.ndarray           # [2] on the table
    yaw: float
    footprint: float               # bounding radius in the table plane
    part_ids: list = field(default_factory=list)   # global part indices of its primitives
    z_range: tuple = (0.0, 0.0)
    color: str = ""                # COLORS key it was built with ("red", "wood", ...)
    shape: str = ""                # primitive kind of its largest part ("ellipsoid", "box", ...)


@dataclass
class SyntheticLayout:
    objects: list                  # [SceneObject]
    prims: list                    # [Primitive], objects' first, then background
    part_words: list               # global part index -> part word
    part_groups: list              # global part index -> m group
    part_objects: list             # global part index -> object index
    light: np.ndarray              # [3] unit direction towards the light
    table_radius: float


def _footprint(parts) -> float:
    r = 0.0
    for p in parts:
        pr = Primitive(p.kind, p.params, (0, 0, 0), p.rot)
        c, rad = pr.bounding_sphere()
        c = np.asarray(p.offset) + p.rot @ c
        r = max(r, float(np.hypot(c[0], c[1]) + rad * 0.85))
    return r


def _entry(k: int, c: str) -> tuple[str, str, object]:
    pat, _, builder = VOCAB[k]
    return (pat.format(c) if "{}" in pat else pat, c, builder)


def choose_objects(rng: np.random.Generator, n: int, shared_names: float = 0.0,
                   names_rng: np.random.Generator = None) -> list[tuple[str, str, object]]:
    """n distinct (name, colour key, builder): two colour variants of one shared-word template
    ("red apple" + "green apple", ...), then one variant per other template, then any left.

    ``shared_names`` > 0 (LERF-OVS scenes hold several objects whose names share words) replaces
    this by a draw from ``names_rng``: a first entry uniformly, then each further one, with
    probability ``shared_names``, uniformly among the entries left whose name shares a word
    (``scene.encoders.tokenize``) with a name chosen so far (if any), otherwise uniformly among
    all entries left."""
    if n > vocabulary_size():
        raise ValueError(f"n_objects={n} exceeds the vocabulary size {vocabulary_size()}")
    if shared_names > 0:
        return _choose_sharing(names_rng, n, shared_names)
    ti = SHARED_WORD_TEMPLATES[rng.integers(len(SHARED_WORD_TEMPLATES))]
    cols = VOCAB[ti][1]
    picks = [(ti, cols[k]) for k in rng.choice(len(cols), size=2, replace=False)]
    others = [int(k) for k in rng.permutation(len(VOCAB)) if k != ti]
    picks += [(k, VOCAB[k][1][rng.integers(len(VOCAB[k][1]))]) for k in others]
    leftover = [(k, c) for k in range(len(VOCAB)) for c in VOCAB[k][1] if (k, c) not in picks]
    picks += [leftover[k] for k in rng.permutation(len(leftover))]
    return [_entry(k, c) for k, c in picks[:n]]


def _choose_sharing(rng: np.random.Generator, n: int, p: float) -> list[tuple[str, str, object]]:
    entries = [_entry(k, c) for k in range(len(VOCAB)) for c in VOCAB[k][1]]
    words = [set(tokenize(e[0])) for e in entries]
    left = list(range(len(entries)))
    picks, seen = [], set()
    while len(picks) < n:
        share = [i for i in left if words[i] & seen]
        pool = share if share and rng.random() < p else left
        i = pool[int(rng.integers(len(pool)))]
        left.remove(i)
        picks.append(i)
        seen |= words[i]
    return [entries[i] for i in picks]


def _main_shape(parts) -> str:
    """Kind of the part with the largest bounding sphere (an object's look-alike rule uses it)."""
    radius = [Primitive(p.kind, p.params, (0, 0, 0), p.rot).bounding_sphere()[1] for p in parts]
    return parts[int(np.argmax(radius))].kind


def place_parts(obj: "SceneObject", oi: int, base: np.ndarray, Rz: np.ndarray, z_floor: float,
                prims: list, words: list, groups: list, pobj: list) -> None:
    """Object ``oi``'s parts as world primitives (rotated by ``Rz``, then moved to ``base``), appended to
    ``prims`` with their part words, groups and owner; sets ``obj.part_ids`` and ``obj.z_range``
    (clipped below at ``z_floor``, the surface the object stands on)."""
    zs = []
    for p in obj.parts:
        gi = len(words)
        pr = Primitive(p.kind, p.params, base + Rz @ np.asarray(p.offset, float), Rz @ p.rot,
                       color=p.color, color2=p.color2, texture=p.texture, tex_scale=p.tex_scale,
                       obj=oi, part=gi)
        c, rad = pr.bounding_sphere()
        zs += [c[2] - rad, c[2] + rad]
        prims.append(pr)
        words.append(p.word)
        groups.append(p.group)
        pobj.append(oi)
        obj.part_ids.append(gi)
    obj.z_range = (max(min(zs), z_floor), max(zs))


def build_layout(rng: np.random.Generator, n_objects: int, layout_radius: float,
                 touch_prob: float = 0.35, shared_names: float = 0.0,
                 names_rng: np.random.Generator = None) -> SyntheticLayout:
    """Places ``n_objects`` objects without overlap inside a disc of ``layout_radius``.

    With probability ``touch_prob`` an object is put right next to an already placed one
    (footprints touching), so that some objects touch or occlude each other. ``shared_names`` /
    ``names_rng``: see ``choose_objects``."""
    chosen = choose_objects(rng, n_objects, shared_names, names_rng)
    built = [(name, b(COLORS[c])) for name, c, b in chosen]
    foot = [_footprint(parts) for _, parts in built]
    order = np.argsort([-f for f in foot], kind="stable")
    pos = [None] * len(built)
    placed: list[int] = []
    R = layout_radius
    for i in order:
        for attempt in range(2000):
            if attempt and attempt % 400 == 0:
                R *= 1.1  # crowded: widen the layout disc
            if placed and rng.random() < touch_prob:
                j = placed[rng.integers(len(placed))]
                a = rng.uniform(0, 2 * np.pi)
                p = pos[j] + (foot[i] + foot[j] + rng.uniform(0, 0.01)) * np.array([np.cos(a), np.sin(a)])
            else:
                rr = np.sqrt(rng.uniform(0, 1)) * max(R - foot[i], 0.0)
                a = rng.uniform(0, 2 * np.pi)
                p = rr * np.array([np.cos(a), np.sin(a)])
            if np.linalg.norm(p) + foot[i] > R:
                continue
            if all(np.linalg.norm(p - pos[j]) >= foot[i] + foot[j] for j in placed):
                break
        else:
            raise RuntimeError("could not place all objects; increase layout_radius")
        pos[i] = p
        placed.append(i)
    objects, prims, words, groups, pobj = [], [], [], [], []
    for oi, ((name, parts), f) in enumerate(zip(built, foot)):
        yaw = float(rng.uniform(0, 2 * np.pi))
        Rz = _rz(yaw)
        base = np.array([pos[oi][0], pos[oi][1], TABLE_TOP])
        obj = SceneObject(name, parts, pos[oi], yaw, f, color=chosen[oi][1], shape=_main_shape(parts))
        place_parts(obj, oi, base, Rz, TABLE_TOP, prims, words, groups, pobj)
        objects.append(obj)
    table_r = R + 0.3
    prims += [
        Primitive("frustum", (table_r, table_r, TABLE_TOP - FLOOR_Z, True), (0, 0, FLOOR_Z),
                  color=COLORS["wood"], color2=_dim(COLORS["wood"], 0.85), texture="rings",
                  tex_scale=0.09, region=1),
        Primitive("plane", (), (0, 0, FLOOR_Z), color=(0.55, 0.55, 0.52), color2=(0.35, 0.35, 0.38),
                  texture="checker", tex_scale=0.6, region=2),
        Primitive("frustum", (WALL_R, WALL_R, WALL_TOP - FLOOR_Z, False), (0, 0, FLOOR_Z),
                  color=(0.85, 0.82, 0.72), color2=(0.7, 0.74, 0.8), texture="vstripes",
                  tex_scale=18, region=3),
    ]
    light = np.array([0.45, -0.35, 0.82])
    return SyntheticLayout(objects, prims, words, groups, pobj, light / np.linalg.norm(light), table_r)


@dataclass
class ViewCamera:
    name: str                      # image stem, "frame_00001"
    R: np.ndarray                  # [3,3] world -> camera
    t: np.ndarray                  # [3]
    K: np.ndarray                  # [3,3] pixels
    width: int
    height: int


def orbit_cameras(rng: np.random.Generator, n_views: int, width: int, height: int, fov_deg: float,
                  distance: float, elev_range: tuple) -> list[ViewCamera]:
    """Views on a hemisphere orbit: azimuth sweeps 360°, elevation oscillates twice between
    ``elev_range`` (degrees), distance and target jitter a little like a hand-held capture."""
    f = width / (2 * np.tan(np.deg2rad(fov_deg) / 2))
    K = intrinsics(f, f, width / 2, height / 2)
    lo, hi = elev_range
    az0 = rng.uniform(0, 2 * np.pi)
    cams = []
    for i in range(n_views):
        s = i / max(n_views, 1)
        az = az0 + 2 * np.pi * s + rng.normal(0, 0.02)
        el = np.deg2rad(lo + (hi - lo) * (0.5 - 0.5 * np.cos(4 * np.pi * s)) + rng.normal(0, 1.0))
        dist = distance * (1 + rng.uniform(-0.08, 0.08))
        target = np.array([0, 0, 0.12]) + rng.normal(0, 0.04, 3)
        center = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        R, t = look_at(center, target, up=(0.0, 0.0, 1.0))
        cams.append(ViewCamera(f"frame_{i + 1:05d}", R, t, K.copy(), width, height))
    return cams
