"""Analytic numpy ray caster for the synthetic scenes (independent of the Gaussian renderer).

A scene is a list of :class:`Primitive` s, each a closed analytic surface in its own local frame
(``x_world = center + rot @ x_local``):

==============  ==========================  ====================================================
kind            params                      local shape
==============  ==========================  ====================================================
``ellipsoid``   (a, b, c)                   x²/a² + y²/b² + z²/c² = 1 (a sphere when a = b = c)
``box``         (hx, hy, hz)                |x| <= hx, |y| <= hy, |z| <= hz
``frustum``     (r0, r1, h, capped)         x²+y² = (r0 + (r1-r0) z/h)², 0 <= z <= h; caps at
                                            z = 0 and z = h when ``capped`` (cylinder: r0 = r1,
                                            cone: r1 = 0)
``capsule``     (r, h)                      points within r of the segment z in [-h/2, h/2]
``torus``       (R, r)                      (sqrt(x²+y²) - R)² + z² = r² (ring in the xy plane)
``plane``       ()                          z = 0, infinite, normal +z
==============  ==========================  ====================================================

:func:`cast` returns the nearest hit along each ray. Rays are ``o + t d`` with t > ``eps``;
``d`` need not be unit length (t is then in units of |d|). Rotations are orthonormal, so t is the
same in the local and world frames. Each primitive is first culled with its bounding sphere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

KINDS = ("ellipsoid", "box", "frustum", "capsule", "torus", "plane")
INF = np.inf


def rows_times(a: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``a [n,k] @ M [k,m]`` via einsum (numpy's matmul is ~20x slower for tiny k, m)."""
    return np.einsum("...j,jk->...k", a, M)


@dataclass
class Primitive:
    kind: str
    params: tuple
    center: np.ndarray                      # [3] world position of the local origin
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))  # [3,3] local -> world
    color: tuple = (0.5, 0.5, 0.5)          # base RGB in [0,1]
    color2: Optional[tuple] = None          # second colour of the texture
    texture: Optional[str] = None           # None|"stripes"|"vstripes"|"checker"|"rings"|"faces"
    tex_scale: float = 0.1                  # texture period (world units) or count for "vstripes"
    obj: int = -1                           # object index, -1 = background
    part: int = -1                          # global part index, -1 = background
    region: int = 0                         # background region id (0 for objects)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown primitive kind {self.kind!r}; expected one of {KINDS}")
        self.center = np.asarray(self.center, dtype=np.float64).reshape(3)
        self.rot = np.asarray(self.rot, dtype=np.float64).reshape(3, 3)
        p = self.params
        sizes = {"ellipsoid": p[:3], "box": p[:3], "frustum": p[:3], "capsule": p[:2], "torus": p[:2]}
        for v in sizes.get(self.kind, ()):
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{self.kind} primitive: sizes must be finite and >= 0, got {p}")

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """(centre [3], radius) enclosing the primitive; radius inf for a plane."""
        p = self.params
        if self.kind == "ellipsoid":
            return self.center, float(max(p[:3]))
        if self.kind == "box":
            return self.center, float(np.linalg.norm(p[:3]))
        if self.kind == "frustum":
            r0, r1, h = p[:3]
            return self.center + self.rot[:, 2] * h / 2, float(np.hypot(max(r0, r1), h / 2))
        if self.kind == "capsule":
            return self.center, float(p[1] / 2 + p[0])
        if self.kind == "torus":
            return self.center, float(p[0] + p[1])
        return self.center, INF


def _quadratic_roots(A, B, C):
    """Both roots of A t² + B t + C = 0 ([n] each; nan where none). A ~ 0 -> linear root twice."""
    disc = B * B - 4 * A * C
    sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
    lin = np.abs(A) < 1e-12
    safeA = np.where(lin, 1.0, A)
    t1 = np.where(lin, -C / np.where(B == 0, np.nan, B), (-B - sq) / (2 * safeA))
    t2 = np.where(lin, t1, (-B + sq) / (2 * safeA))
    return np.minimum(t1, t2), np.maximum(t1, t2)


def _nearest(ts, eps):
    """Per ray, the smallest candidate t > eps: ts [k,n] -> (t [n], which [n])."""
    ts = np.where(np.isfinite(ts) & (ts > eps), ts, INF)
    which = np.argmin(ts, axis=0)
    return ts[which, np.arange(ts.shape[1])], which


def _hit_ellipsoid(o, d, p, eps):
    r = np.asarray(p[:3], dtype=np.float64)
    os, ds = o / r, d / r
    t1, t2 = _quadratic_roots((ds * ds).sum(1), 2 * (os * ds).sum(1), (os * os).sum(1) - 1.0)
    t, _ = _nearest(np.stack([t1, t2]), eps)
    x = o + t[:, None] * d
    return t, x / (r * r)


def _hit_box(o, d, p, eps):
    h = np.asarray(p[:3], dtype=np.float64)
    dd = np.where(np.abs(d) < 1e-15, 1e-15, d)
    a, b = (-h - o) / dd, (h - o) / dd
    tmin = np.minimum(a, b).max(1)
    tmax = np.maximum(a, b).min(1)
    t = np.where(tmin > eps, tmin, tmax)
    t = np.where((tmax >= tmin) & (t > eps), t, INF)
    x = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    q = np.abs(x) / h
    ax = np.argmax(q, axis=1)
    n = np.zeros_like(x)
    n[np.arange(len(x)), ax] = np.sign(x[np.arange(len(x)), ax])
    return t, n


def _hit_frustum(o, d, p, eps):
    r0, r1, h = (float(v) for v in p[:3])
    capped = bool(p[3]) if len(p) > 3 else True
    k = (r1 - r0) / h
    rz = r0 + k * o[:, 2]
    A = d[:, 0] ** 2 + d[:, 1] ** 2 - (k * d[:, 2]) ** 2
    B = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1] - k * d[:, 2] * rz)
    C = o[:, 0] ** 2 + o[:, 1] ** 2 - rz ** 2
    cand = list(_quadratic_roots(A, B, C))
    for i in range(2):
        z = o[:, 2] + cand[i] * d[:, 2]
        cand[i] = np.where((z >= 0) & (z <= h), cand[i], np.nan)
    if capped:
        dz = np.where(np.abs(d[:, 2]) < 1e-15, 1e-15, d[:, 2])
        for zc, rc in ((0.0, r0), (h, r1)):
            tc = (zc - o[:, 2]) / dz
            xy = o[:, :2] + tc[:, None] * d[:, :2]
            cand.append(np.where((xy ** 2).sum(1) <= rc * rc, tc, np.nan))
    t, which = _nearest(np.stack(cand), eps)
    x = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = np.stack([x[:, 0], x[:, 1], -k * (r0 + k * x[:, 2])], axis=1)
    n[which == 2] = (0.0, 0.0, -1.0)
    n[which == 3] = (0.0, 0.0, 1.0)
    return t, n


def _hit_capsule(o, d, p, eps):
    r, h = float(p[0]), float(p[1])
    A = d[:, 0] ** 2 + d[:, 1] ** 2
    B = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    C = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    cand = list(_quadratic_roots(A, B, C))
    for i in range(2):
        z = o[:, 2] + cand[i] * d[:, 2]
        cand[i] = np.where(np.abs(z) <= h / 2, cand[i], np.nan)
    for zc in (-h / 2, h / 2):
        oc = o - np.array([0.0, 0.0, zc])
        cand.extend(_quadratic_roots((d * d).sum(1), 2 * (oc * d).sum(1), (oc * oc).sum(1) - r * r))
    t, _ = _nearest(np.stack(cand), eps)
    x = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    axis = np.zeros_like(x)
    axis[:, 2] = np.clip(x[:, 2], -h / 2, h / 2)
    return t, x - axis


def _hit_torus(o, d, p, eps):
    R, r = float(p[0]), float(p[1])
    dn = np.linalg.norm(d, axis=1)
    u = d / dn[:, None]
    m = (o * o).sum(1)
    nn = (o * u).sum(1)
    kk = m + R * R - r * r
    # monic quartic in s (distance along the unit direction u)
    c3 = 4 * nn
    c2 = 2 * kk + 4 * nn * nn - 4 * R * R * (u[:, 0] ** 2 + u[:, 1] ** 2)
    c1 = 4 * nn * kk - 8 * R * R * (o[:, 0] * u[:, 0] + o[:, 1] * u[:, 1])
    c0 = kk * kk - 4 * R * R * (o[:, 0] ** 2 + o[:, 1] ** 2)
    n = len(o)
    comp = np.zeros((n, 4, 4))
    comp[:, 0, :] = -np.stack([c3, c2, c1, c0], axis=1)
    comp[:, 1, 0] = comp[:, 2, 1] = comp[:, 3, 2] = 1.0
    roots = np.linalg.eigvals(comp) if n else np.zeros((0, 4), complex)
    s = np.where(np.abs(roots.imag) < 1e-3 * (R + r), roots.real, np.nan).T  # [4,n]
    for _ in range(2):  # Newton polish of each real root
        f = (((s + c3) * s + c2) * s + c1) * s + c0
        df = ((4 * s + 3 * c3) * s + 2 * c2) * s + c1
        s = s - f / np.where(np.abs(df) < 1e-12, np.inf, df)
    t, _ = _nearest(s / dn, eps)
    x = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    g = 4 * ((x * x).sum(1) + R * R - r * r)[:, None] * x
    g[:, :2] -= 8 * R * R * x[:, :2]
    return t, g


def _hit_plane(o, d, p, eps):
    dz = np.where(np.abs(d[:, 2]) < 1e-15, 1e-15, d[:, 2])
    t = -o[:, 2] / dz
    t = np.where(t > eps, t, INF)
    n = np.zeros_like(o)
    n[:, 2] = 1.0
    return t, n


_HIT = {"ellipsoid": _hit_ellipsoid, "box": _hit_box, "frustum": _hit_frustum,
        "capsule": _hit_capsule, "torus": _hit_torus, "plane": _hit_plane}


@dataclass
class Hits:
    t: np.ndarray        # [n] ray parameter of the nearest hit, inf = miss
    prim: np.ndarray     # [n] int64 primitive index, -1 = miss
    normal: np.ndarray   # [n,3] unit world normal facing the ray (zeros on a miss)
    point: np.ndarray    # [n,3] world hit point (nan on a miss)


def _groups(prims: list[Primitive]):
    """Primitives grouped by object (background ones alone) with enclosing spheres:
    [(member indices, centre [3], radius)] (radius inf for planes)."""
    by_obj: dict = {}
    for i, p in enumerate(prims):
        by_obj.setdefault(p.obj if p.obj >= 0 else -1 - i, []).append(i)
    out = []
    for members in by_obj.values():
        spheres = [prims[i].bounding_sphere() for i in members]
        C = np.mean([c for c, _ in spheres], axis=0)
        rad = max(np.linalg.norm(c - C) + r for c, r in spheres)
        out.append((members, C, rad))
    return out


def _sphere_candidates(o, d, dd, c, rad, limit, eps):
    """Indices of rays (o [3] or [n,3], d [n,3], dd = |d|^2 [n]) that meet the sphere (c, rad)
    ahead of eps and possibly before ``limit`` [n]."""
    oc = o - c
    b = d @ oc if oc.ndim == 1 else np.einsum("ij,ij->i", oc, d)
    cc = oc @ oc - rad * rad if oc.ndim == 1 else np.einsum("ij,ij->i", oc, oc) - rad * rad
    disc = b * b - dd * cc
    sq = np.sqrt(np.maximum(disc, 0))
    return np.nonzero((disc >= 0) & ((sq - b) > eps * dd) & ((-b - sq) < limit * dd))[0]


def cast(prims: list[Primitive], origins: np.ndarray, dirs: np.ndarray, eps: float = 1e-6) -> Hits:
    """Nearest hit of every ray ``origins + t * dirs`` (t > eps) among ``prims``.

    ``origins``: [3] (one shared origin, e.g. a camera centre) or [n,3]; ``dirs``: [n,3]."""
    d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
    o = np.asarray(origins, dtype=np.float64)
    single = o.shape == (3,)
    if not single:
        o = np.broadcast_to(o.reshape(-1, 3), d.shape)
    n = d.shape[0]
    best_t = np.full(n, INF)
    best_p = np.full(n, -1, dtype=np.int64)
    best_nl = np.zeros((n, 3))
    dd = np.einsum("ij,ij->i", d, d)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for members, C, rad in _groups(prims):
            gidx = (_sphere_candidates(o, d, dd, C, rad, best_t, eps) if np.isfinite(rad)
                    else np.arange(n))
            if gidx.size == 0:
                continue
            go = o if single else o[gidx]
            for i in members:
                pr = prims[i]
                idx = gidx
                if len(members) > 1:
                    c, r = pr.bounding_sphere()
                    sub = _sphere_candidates(go, d[gidx], dd[gidx], c, r, best_t[gidx], eps)
                    idx = gidx[sub]
                if idx.size == 0:
                    continue
                lo = rows_times((o if single else o[idx]) - pr.center, pr.rot)  # world -> local
                lo = np.broadcast_to(lo, (idx.size, 3))
                ld = rows_times(d[idx], pr.rot)
                t, nl = _HIT[pr.kind](lo, ld, pr.params, eps)
                better = np.isfinite(t) & (t < best_t[idx])
                j = idx[better]
                best_t[j] = t[better]
                best_p[j] = i
                best_nl[j] = rows_times(nl[better], pr.rot.T)  # local -> world
    hit = best_p >= 0
    nrm = np.linalg.norm(best_nl, axis=1, keepdims=True)
    normal = np.where(hit[:, None], best_nl / np.where(nrm > 0, nrm, 1.0), 0.0)
    flip = np.einsum("ij,ij->i", normal, d) > 0  # face the viewer
    normal[flip] *= -1
    point = np.where(hit[:, None], o + np.where(hit, best_t, 0)[:, None] * d, np.nan)
    return Hits(best_t, best_p, normal, point)


# ---------------------------------------------------------------------------------------------
# cameras -> rays, shading
# ---------------------------------------------------------------------------------------------
def camera_rays(R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int,
                sub: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rays of a pinhole camera (project convention, ``scene/cameras.py``).

    ``R`` [3,3], ``t`` [3] world-to-camera; ``K`` [3,3] pixels. ``sub`` = 1: one ray through each
    pixel centre (j+0.5, i+0.5); ``sub`` = s: s×s stratified samples at offsets (k+0.5)/s.
    Returns origins [3] (the camera centre) and dirs [height, width, sub*sub, 3] (camera-z = 1)."""
    offs = (np.arange(sub) + 0.5) / sub
    oy, ox = np.meshgrid(offs, offs, indexing="ij")
    u = np.arange(width)[None, :, None] + ox.reshape(1, 1, -1)    # [1,W,S]
    v = np.arange(height)[:, None, None] + oy.reshape(1, 1, -1)   # [H,1,S]
    u, v = np.broadcast_arrays(u, v)
    xc = (u - K[0, 2]) / K[0, 0]
    yc = (v - K[1, 2]) / K[1, 1]
    cam = np.stack([xc, yc, np.ones_like(xc)], axis=-1)           # [H,W,S,3]
    dirs = rows_times(cam, R)                                     # R^T applied to each row
    center = -R.T @ t
    return center, dirs


def texture_color(prim: Primitive, x_local: np.ndarray, n_local: np.ndarray) -> np.ndarray:
    """Albedo [n,3] of ``prim`` at local points ``x_local`` [n,3] with local normals [n,3]."""
    base = np.asarray(prim.color, dtype=np.float64)
    col = np.broadcast_to(base, x_local.shape).copy()
    if prim.texture is None:
        return col
    c2 = np.asarray(prim.color2 if prim.color2 is not None else base * 0.5, dtype=np.float64)
    s = prim.tex_scale
    x = x_local
    if prim.texture == "stripes":        # horizontal bands along local z
        m = np.floor(x[:, 2] / s).astype(np.int64) % 2 == 1
    elif prim.texture == "vstripes":     # tex_scale vertical stripes around the local z axis
        ang = np.arctan2(x[:, 1], x[:, 0]) / (2 * np.pi) + 0.5
        m = np.floor(ang * s * 2).astype(np.int64) % 2 == 1
    elif prim.texture == "checker":      # solid 3-D checker
        m = np.floor(x / s).astype(np.int64).sum(1) % 2 == 1
    elif prim.texture == "rings":        # concentric rings in the xy plane (wood, table top)
        m = np.floor(np.hypot(x[:, 0], x[:, 1]) / s).astype(np.int64) % 2 == 1
    elif prim.texture == "faces":        # one colour per box face + dark grid lines (toy cube)
        palette = np.array([(0.9, 0.1, 0.1), (1.0, 0.55, 0.05), (0.1, 0.6, 0.15), (0.1, 0.25, 0.85),
                            (0.95, 0.9, 0.1), (0.95, 0.95, 0.95)])
        ax = np.argmax(np.abs(n_local), axis=1)
        face = 2 * ax + (n_local[np.arange(len(ax)), ax] > 0)
        col = palette[face]
        frac = np.abs((x / s) - np.floor(x / s) - 0.5)
        lines = np.sort(frac, axis=1)[:, 1] > 0.42   # ignore the axis normal to the face
        col[lines] = (0.05, 0.05, 0.05)
        return col
    else:
        raise ValueError(f"unknown texture {prim.texture!r}")
    col[m] = c2
    return col


def shade(prims: list[Primitive], hits: Hits, dirs: np.ndarray, light: np.ndarray,
          ambient: float = 0.35, shadows: bool = True, sky=((0.78, 0.85, 0.95), (0.55, 0.65, 0.85))
          ) -> np.ndarray:
    """Lambert + ambient colour [n,3] of cast rays ``dirs`` [n,3]; misses get a sky gradient.

    ``light``: [3] unit direction towards the light. With ``shadows``, a secondary ray towards
    the light that hits any primitive removes the diffuse term."""
    n = hits.t.shape[0]
    d = dirs.reshape(-1, 3)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    w = np.clip(dn[:, 2] * 0.5 + 0.5, 0, 1)[:, None]
    out = np.asarray(sky[1]) * (1 - w) + np.asarray(sky[0]) * w
    hit = hits.prim >= 0
    if not hit.any():
        return out
    albedo = np.zeros((n, 3))
    for i in np.unique(hits.prim[hit]):
        sel = hits.prim == i
        pr = prims[i]
        xl = rows_times(hits.point[sel] - pr.center, pr.rot)
        nl = rows_times(hits.normal[sel], pr.rot)
        albedo[sel] = texture_color(pr, xl, nl)
    lam = np.clip(hits.normal @ light, 0, None)
    if shadows:
        idx = np.nonzero(hit & (lam > 0))[0]
        if idx.size:
            p0 = hits.point[idx] + hits.normal[idx] * 1e-4
            sh = cast(prims, p0, np.broadcast_to(light, p0.shape), eps=1e-5)
            lam[idx[sh.prim >= 0]] = 0.0
    col = albedo * (ambient + (1 - ambient) * lam)[:, None]
    out[hit] = col[hit]
    return out
