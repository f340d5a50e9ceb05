"""One view of a synthetic layout: RGB image plus the ground-truth buffers of the pixel centres."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import SyntheticLayout, ViewCamera
from .raycast import Hits, camera_rays, cast, shade


@dataclass
class ViewRender:
    image: np.ndarray    # [H,W,3] uint8 RGB (supersampled colour)
    obj: np.ndarray      # [H,W] int32 object index of the pixel-centre ray, -1 = background
    part: np.ndarray     # [H,W] int32 global part index, -1 = background
    region: np.ndarray   # [H,W] int32 background region (1 table, 2 floor, 3 wall, 4 sky), 0 on objects
    upper: np.ndarray    # [H,W] bool: hit above the middle height of its object
    point: np.ndarray    # [H,W,3] float64 world hit point of the pixel-centre ray (nan for sky)
    depth: np.ndarray    # [H,W] float64 camera-z of the hit (inf for sky)


CHUNK = 1 << 17  # rays per cast/shade call: bounds the memory of large views


def _cast_chunked(layout: SyntheticLayout, center: np.ndarray, dirs: np.ndarray) -> Hits:
    """``cast`` of rays from ``center`` [3] along ``dirs`` [n,3], CHUNK rays at a time."""
    parts = [cast(layout.prims, center, dirs[i:i + CHUNK]) for i in range(0, len(dirs), CHUNK)]
    if len(parts) == 1:
        return parts[0]
    return Hits(*(np.concatenate([getattr(h, k) for h in parts]) for k in ("t", "prim", "normal", "point")))


def id_buffers(layout: SyntheticLayout, cam: ViewCamera):
    """Pixel-centre ray cast of one view: (hits, obj [H,W], part [H,W], region [H,W])."""
    H, W = cam.height, cam.width
    center, dirs = camera_rays(cam.R, cam.t, cam.K, W, H, sub=1)
    hits = _cast_chunked(layout, center, dirs.reshape(-1, 3))
    obj_of = np.array([p.obj for p in layout.prims] + [-1], dtype=np.int32)
    part_of = np.array([p.part for p in layout.prims] + [-1], dtype=np.int32)
    reg_of = np.array([p.region for p in layout.prims] + [4], dtype=np.int32)
    pi = hits.prim  # -1 (miss) indexes the appended sentinel
    return hits, obj_of[pi].reshape(H, W), part_of[pi].reshape(H, W), reg_of[pi].reshape(H, W)


def render_view(layout: SyntheticLayout, cam: ViewCamera, supersample: int = 2,
                shadows: bool = True) -> ViewRender:
    """Renders ``cam``: colour from ``supersample``² stratified rays per pixel (Lambert + ambient,
    optional shadows), all id buffers from the single pixel-centre ray."""
    H, W = cam.height, cam.width
    hits, obj, part, region = id_buffers(layout, cam)
    S = supersample * supersample
    center, d = camera_rays(cam.R, cam.t, cam.K, W, H, sub=supersample)
    d = d.reshape(-1, 3)
    col = np.empty((H * W * S, 3))
    for i in range(0, len(d), CHUNK):
        di = d[i:i + CHUNK]
        if supersample == 1:
            h = Hits(hits.t[i:i + CHUNK], hits.prim[i:i + CHUNK], hits.normal[i:i + CHUNK],
                     hits.point[i:i + CHUNK])
        else:
            h = cast(layout.prims, center, di)
        col[i:i + CHUNK] = shade(layout.prims, h, di, layout.light, shadows=shadows)
    col = col.reshape(H * W, S, 3).mean(1)
    img = np.clip(np.round(np.sqrt(np.clip(col, 0, 1)) * 255), 0, 255).astype(np.uint8)  # gamma 2
    point = hits.point.reshape(H, W, 3)
    mid = np.array([(o.z_range[0] + o.z_range[1]) / 2 for o in layout.objects] + [np.inf])
    upper = (obj >= 0) & (point[..., 2] > mid[obj])
    depth = np.where(np.isfinite(point[..., 0]),
                     (point.reshape(-1, 3) @ cam.R[2] + cam.t[2]).reshape(H, W), np.inf)
    return ViewRender(img.reshape(H, W, 3), obj, part, region, upper, point, depth)
