"""COLMAP model of a synthetic scene: one PINHOLE camera, the posed images and a sparse point
cloud sampled on surfaces seen by the views, with multi-view tracks found by ray casting.

Each point is sampled at a pixel-centre hit of some view (half of the samples on objects, half on
the background), then seen by every view whose ray towards it is not blocked. Its stored
position is the exact surface point plus Gaussian noise (``point_noise``); a fraction
``outlier_frac`` is displaced by 0.1-0.4 world units in a random direction (they keep their
tracks, so their reprojection ``error`` is large). Tracks keep at most ``MAX_TRACK`` of the views
that see a point (always its source view). ``xys`` are the exact projections; ``error``
is the mean pixel distance between them and the projection of the stored point. Points seen by
fewer than 2 views are dropped (as COLMAP would).
"""
from __future__ import annotations

import numpy as np

from scene.colmap import ColmapCamera, ColmapImage, ColmapPoints, rotmat2qvec, write_model

from .layout import SyntheticLayout, ViewCamera
from .raycast import cast, rows_times
from .render import ViewRender

MAX_TRACK = 12  # views kept per point (COLMAP tracks of hand-held captures are mostly a few to tens)


def sample_view_points(view: ViewRender, n: int, rng: np.random.Generator):
    """``n`` surface samples of one view: (xyz [n,3], rgb [n,3] uint8, obj [n], region [n])."""
    H, W = view.obj.shape
    on_obj = np.flatnonzero(view.obj.ravel() >= 0)
    on_bg = np.flatnonzero((view.obj.ravel() < 0) & (view.region.ravel() != 4))
    n_obj = min(n // 2, on_obj.size) if on_bg.size else min(n, on_obj.size)
    n_bg = min(n - n_obj, on_bg.size)
    idx = np.concatenate([rng.choice(on_obj, n_obj) if n_obj else np.zeros(0, np.int64),
                          rng.choice(on_bg, n_bg) if n_bg else np.zeros(0, np.int64)])
    return (view.point.reshape(-1, 3)[idx], view.image.reshape(-1, 3)[idx],
            view.obj.ravel()[idx], view.region.ravel()[idx])


def project(cam: ViewCamera, X: np.ndarray):
    """Pixel projections uv [P,2] and camera depths z [P] of world points ``X`` [P,3]."""
    xc = rows_times(X, cam.R.T) + cam.t
    z = xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (xc[:, :2] / z[:, None]) * np.array([cam.K[0, 0], cam.K[1, 1]]) + cam.K[:2, 2]
    return uv, z


def build_colmap(layout: SyntheticLayout, cams: list[ViewCamera], X: np.ndarray, rgb: np.ndarray,
                 src_view: np.ndarray, point_noise: float, outlier_frac: float,
                 rng: np.random.Generator):
    """Tracks + noise for the exact surface samples ``X`` [P,3] (colours ``rgb`` [P,3] uint8,
    sampled in view ``src_view`` [P]) -> (cameras, images, points) for ``write_model``, plus
    the kept sample indices [P'] and the outlier flags [P']."""
    P = X.shape[0]
    obs_img, obs_pt, obs_xy = [], [], []
    for vi, cam in enumerate(cams):
        uv, z = project(cam, X)
        ok = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        idx = np.flatnonzero(ok)
        if idx.size:
            c = -cam.R.T @ cam.t
            hits = cast(layout.prims, c, X[idx] - c)   # t = 1 at the point itself
            seen = (hits.t > 1 - 1e-6) | (src_view[idx] == vi)
            idx = idx[seen]
        obs_img.append(np.full(idx.size, vi))
        obs_pt.append(idx)
        obs_xy.append(uv[idx])
    obs_img, obs_pt, obs_xy = map(np.concatenate, (obs_img, obs_pt, obs_xy))
    # cap track lengths at MAX_TRACK random views (the source view always stays)
    key = np.where(obs_img == src_view[obs_pt], -1.0, rng.random(obs_pt.size))
    order = np.lexsort((key, obs_pt))
    rank = np.arange(order.size) - np.searchsorted(obs_pt[order], obs_pt[order])
    sel = np.sort(order[rank < MAX_TRACK])
    obs_img, obs_pt, obs_xy = obs_img[sel], obs_pt[sel], obs_xy[sel]
    count = np.bincount(obs_pt, minlength=P)
    keep = np.flatnonzero(count >= 2)
    new_id = np.full(P, -1, dtype=np.int64)
    new_id[keep] = np.arange(1, keep.size + 1)
    Pk = keep.size
    stored = X[keep] + rng.standard_normal((Pk, 3)) * point_noise
    outlier = rng.random(Pk) < outlier_frac
    n_out = int(outlier.sum())
    dirs = rng.standard_normal((n_out, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    stored[outlier] += dirs * rng.uniform(0.1, 0.4, (n_out, 1))

    cameras = {1: ColmapCamera(1, "PINHOLE", cams[0].width, cams[0].height,
                               np.array([cams[0].K[0, 0], cams[0].K[1, 1], cams[0].K[0, 2], cams[0].K[1, 2]]))}
    images = {}
    err_sum = np.zeros(Pk)
    tracks_img = [[] for _ in range(Pk)]
    tracks_idx = [[] for _ in range(Pk)]
    for vi, cam in enumerate(cams):
        m = (obs_img == vi) & (new_id[obs_pt] > 0)
        pid = new_id[obs_pt[m]]
        order = np.argsort(pid, kind="stable")
        pid, xy = pid[order], obs_xy[m][order]
        uv, _ = project(cam, stored[pid - 1])
        err_sum[pid - 1] += np.linalg.norm(uv - xy, axis=1)
        for k, p in enumerate(pid.tolist()):
            tracks_img[p - 1].append(vi + 1)
            tracks_idx[p - 1].append(k)
        images[vi + 1] = ColmapImage(vi + 1, rotmat2qvec(cam.R), np.asarray(cam.t, float), 1,
                                     f"{cam.name}.png", xy.astype(np.float64), pid.astype(np.int64))
    tracks = [(np.asarray(a, np.int32), np.asarray(b, np.int32)) for a, b in zip(tracks_img, tracks_idx)]
    points = ColmapPoints(np.arange(1, Pk + 1, dtype=np.int64), stored, rgb[keep].astype(np.uint8),
                          err_sum / count[keep], tracks)
    return cameras, images, points, keep, outlier


def write_colmap(sparse_dir, layout, cams, X, rgb, src_view, point_noise, outlier_frac, rng):
    """Builds the model (``build_colmap``) and writes it as COLMAP text into ``sparse_dir``."""
    cameras, images, points, keep, outlier = build_colmap(layout, cams, X, rgb, src_view,
                                                          point_noise, outlier_frac, rng)
    write_model(sparse_dir, cameras, images, points, ext=".txt")
    return points, outlier
