"""Scene loading for the Blender / NeRF ``transforms_*.json`` camera format.

Expected folder (NeRF synthetic, instant-ngp, and OpenGaussian's ScanNet scenes)::

    <source_path>/transforms_train.json     # training views
    <source_path>/transforms_test.json      # optional: test views
    <source_path>/<file_path of each frame> # e.g. color/0.jpg; the extension may be left out
    <source_path>/points3d.ply              # optional: initial points (x, y, z [, red, green, blue])

Format (NeRF synthetic / instant-ngp ``transforms.json``): ``frames`` is a list of
``{"file_path", "transform_matrix"}``, the matrix being 4x4 camera-to-world in OpenGL/Blender axes
(x right, y up, the camera looks along -z). Intrinsics are ``fl_x, fl_y, cx, cy, w, h`` and/or the
horizontal field of view ``camera_angle_x`` (radians), at the top level or per frame (a frame's own
keys win). Without ``fl_x``: ``fx = 0.5 W / tan(camera_angle_x / 2)``, ``fy = fx`` (3DGS
``readCamerasFromTransforms``) unless ``fl_y`` or ``camera_angle_y`` is given; without ``cx, cy``
the principal point is the image centre; without ``w, h`` the calibration size is the image file's.

Cameras come out as ``load_scene``'s do (``scene/cameras.py``: world-to-camera R, t, OpenCV axes,
pixel K at the resolution rule's size), ``image_name`` is the file stem cut at its first dot, and
``uid`` is the index in the list of all cameras (train and test together) sorted by image_name.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from scene.cameras import Camera, intrinsics
from scene.views import (IMAGE_EXTS, SceneData, _first_line, _image_size, _stem, nerfpp_radius,
                         sized_camera)

TRAIN_FILE, TEST_FILE, POINTS_FILE = "transforms_train.json", "transforms_test.json", "points3d.ply"
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")  # instant-ngp's OpenCV distortion terms


@dataclass
class BlenderFrame:
    image_path: Path             # the image file (extension resolved)
    c2w: np.ndarray              # [4,4] float64 camera-to-world, OpenGL axes, as in the file
    intrinsics: Optional[dict]   # the intrinsic keys that apply to this frame (None: none given)
    index: int                   # position in the file's ``frames`` list


def _resolve_image(root: Path, file_path: str) -> list[Path]:
    """Candidate files for a frame's ``file_path``: itself if it is a file, else with each image
    extension appended ("./color/0" -> color/0.jpg, as 3DGS appends ".png" to NeRF synthetic's)."""
    p = root / file_path
    if p.is_file():
        return [p]
    found = []
    for ext in IMAGE_EXTS:
        for e in (ext, ext.upper()):
            q = p.with_name(p.name + e)
            if q.is_file() and not any(q.samefile(f) for f in found):  # case-insensitive file systems
                found.append(q)
    return found


def read_transforms(path: Union[str, Path]) -> list[BlenderFrame]:
    """The frames of a ``transforms_*.json`` file; image paths are relative to its folder.

    Every error (missing or invalid file, no frames, a frame without ``file_path`` or
    ``transform_matrix``, a matrix that is not a finite 4x4, an image that is not there, non-zero
    distortion) is a ValueError or FileNotFoundError whose message starts with ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: transforms file not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object with a 'frames' list, got {type(meta).__name__}")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: no frames (expected a non-empty 'frames' list)")
    top = {k: meta[k] for k in _INTRINSIC_KEYS + _DISTORTION_KEYS if k in meta}
    out = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise ValueError(f"{path}: frame {i} is not a JSON object")
        fp = fr.get("file_path")
        if not isinstance(fp, str) or not fp:
            raise ValueError(f"{path}: frame {i} has no 'file_path'")
        if "transform_matrix" not in fr:
            raise ValueError(f"{path}: frame {i} ({fp!r}) has no 'transform_matrix'")
        try:
            c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            c2w = None
        if c2w is None or c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
            raise ValueError(f"{path}: frame {i} ({fp!r}): 'transform_matrix' must be a 4x4 matrix of "
                             f"finite numbers, got {fr['transform_matrix']!r:.200}")
        intr = {**top, **{k: fr[k] for k in _INTRINSIC_KEYS + _DISTORTION_KEYS if k in fr}}
        for k, v in intr.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{path}: frame {i} ({fp!r}): {k!r} must be a finite number, got {v!r}")
        dist = {k: intr.pop(k) for k in _DISTORTION_KEYS if k in intr}
        if any(v != 0 for v in dist.values()):
            raise ValueError(f"{path}: frame {i} ({fp!r}) has non-zero distortion {dist}; undistort the "
                             f"images first (only pinhole cameras are supported)")
        cands = _resolve_image(path.parent, fp)
        if not cands:
            raise FileNotFoundError(f"{path}: frame {i}: image {path.parent / fp} not found (nor with an image "
                                    f"extension appended): restore the image, or remove the frame")
        if len(cands) > 1:
            raise ValueError(f"{path}: frame {i}: file_path {fp!r} matches several images "
                             f"({', '.join(c.name for c in cands)}); give the extension in file_path")
        out.append(BlenderFrame(image_path=cands[0], c2w=c2w, intrinsics=intr or None, index=i))
    return out


def opengl_c2w_to_w2c(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) in OpenCV axes from a camera-to-world matrix in OpenGL axes
    (flip the camera's y and z axes, then invert; 3DGS ``readCamerasFromTransforms``)."""
    m = np.array(c2w, dtype=np.float64)
    m[:3, 1:3] *= -1
    w2c = np.linalg.inv(m)
    return w2c[:3, :3].copy(), w2c[:3, 3].copy()


def _focal_from_angle(angle, size: int, key: str, where: str) -> float:
    """NeRF synthetic's focal length from a field of view: ``0.5 * size / tan(angle / 2)``."""
    if not 0 < float(angle) < math.pi:
        raise ValueError(f"{where}: {key} {angle} must be in (0, pi) radians")
    return 0.5 * size / math.tan(0.5 * float(angle))


def frame_intrinsics(intr: Optional[dict], file_size: tuple[int, int], where: str) -> tuple[np.ndarray, int, int]:
    """(K, width, height) at the calibration size (``w``, ``h``, else the file's) for a frame's keys."""
    if not intr or ("fl_x" not in intr and "camera_angle_x" not in intr):
        raise ValueError(f"{where}: no intrinsics: give 'fl_x' (with 'cx', 'cy') or 'camera_angle_x'")
    W, H = int(intr.get("w", file_size[0])), int(intr.get("h", file_size[1]))
    if W < 1 or H < 1:
        raise ValueError(f"{where}: image size w={W}, h={H} must be positive")
    if "fl_x" in intr:
        fx = float(intr["fl_x"])
    else:
        fx = _focal_from_angle(intr["camera_angle_x"], W, "camera_angle_x", where)
    if "fl_y" in intr:
        fy = float(intr["fl_y"])
    elif "camera_angle_y" in intr:
        fy = _focal_from_angle(intr["camera_angle_y"], H, "camera_angle_y", where)
    else:
        fy = fx  # square pixels (3DGS derives FovY from the same focal length)
    if fx <= 0 or fy <= 0:
        raise ValueError(f"{where}: focal lengths fx={fx}, fy={fy} must be positive")
    return intrinsics(fx, fy, float(intr.get("cx", W / 2)), float(intr.get("cy", H / 2))), W, H


def read_points_ply(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """[P,3] float32 xyz and [P,3] float32 rgb in [0, 1] of a PLY's ``vertex`` element (a mesh's
    vertices will do); colours from red/green/blue (integers over their type's max), grey if absent."""
    from plyfile import PlyData

    path = Path(path)
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"].data
    except KeyError:
        raise ValueError(f"{path}: the PLY has no 'vertex' element") from None
    except Exception as e:  # plyfile raises several types (header parse, EOF, unicode, ...)
        raise ValueError(f"{path}: not a readable PLY ({_first_line(e)})") from None
    names = v.dtype.names or ()
    if not all(k in names for k in "xyz"):
        raise ValueError(f"{path}: the vertex element has no x, y, z properties (has {list(names)})")
    xyz = np.stack([v[k] for k in "xyz"], axis=1).astype(np.float32)
    if all(k in names for k in ("red", "green", "blue")):
        cols = np.stack([v[k] for k in ("red", "green", "blue")], axis=1)
        if np.issubdtype(cols.dtype, np.integer):
            rgb = cols.astype(np.float32) / float(np.iinfo(cols.dtype).max)
        else:
            rgb = np.clip(cols.astype(np.float32), 0.0, 1.0)
    else:
        rgb = np.full_like(xyz, 0.5)
    keep = np.all(np.isfinite(xyz), axis=1)
    return xyz[keep].reshape(-1, 3), rgb[keep].reshape(-1, 3)


def load_blender_scene(source_path: Union[str, Path], resolution: int = -1, max_width: int = 1600,
                       verify_images: bool = True, use_test_split: bool = True) -> SceneData:
    """Loads ``transforms_train.json`` (+ ``transforms_test.json``) and ``points3d.ply``.

    The format names its split itself: with ``use_test_split`` the test file's frames are the test
    cameras, else they join the training cameras (3DGS without ``--eval``). Intrinsics are scaled
    to the image file's size, then to the ``resolution`` rule (``target_size_3dgs``), as
    ``load_scene`` does. Without ``points3d.ply`` the point cloud is empty (with a warning).
    ``cameras_extent`` is ``nerfpp_radius`` of the training cameras' centres."""
    root = Path(source_path)
    train_file, test_file = root / TRAIN_FILE, root / TEST_FILE
    splits = [(train_file, read_transforms(train_file), False)]
    if test_file.exists():
        splits.append((test_file, read_transforms(test_file), use_test_split))

    entries = []  # (image_name, image path, transforms file, frame, is_test)
    for f, frames, is_test in splits:
        entries += [(_stem(fr.image_path.name), fr.image_path, f, fr, is_test) for fr in frames]
    entries.sort(key=lambda e: (e[0], str(e[1])))
    for a, b in zip(entries, entries[1:]):
        if a[0] == b[0]:
            raise ValueError(f"{b[2]}: frame {b[3].index} ({b[1].name}) has the same image_name {a[0]!r} as "
                             f"frame {a[3].index} of {a[2].name} ({a[1].name}); image names must be unique")

    train, test, noted = [], [], []
    for uid, (name, img, f, fr, is_test) in enumerate(entries):
        fw, fh = _image_size(img, f, verify_images)
        K, W, H = frame_intrinsics(fr.intrinsics, (fw, fh), f"{f}: frame {fr.index} ({img.name})")
        R, t = opengl_c2w_to_w2c(fr.c2w)
        cam = Camera(uid=uid, image_name=name, R=R, t=t, K=K, width=W, height=H, image_path=img,
                     extra={"transforms_file": f.name, "frame_index": fr.index})
        cam = sized_camera(cam, (fw, fh), resolution, max_width, noted)  # w, h are the calibration size
        (test if is_test else train).append(cam)

    ply = root / POINTS_FILE
    if ply.is_file():
        xyz, rgb = read_points_ply(ply)
    else:
        print(f"warning: {ply} not found: the scene has no initial points", file=sys.stderr)
        xyz, rgb = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    extent = nerfpp_radius(np.array([c.center for c in train]).reshape(-1, 3))
    return SceneData(source_path=root, train_cameras=train, test_cameras=test, points_xyz=xyz,
                     points_rgb=rgb, cameras_extent=extent)
