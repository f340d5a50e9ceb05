"""Scene loading: a COLMAP scene folder -> sorted ``Camera`` lists + the sparse point cloud.

(A Blender / NeRF ``transforms_*.json`` scene is loaded by ``scene/blender.py``; ``load_scene``
hands such a folder to it.)

Expected folder (the 3DGS / LangSplat / COS3D layout)::

    <source_path>/<images>/<file>          # looked up by the basename of the COLMAP image name
    <source_path>/sparse/0/{cameras,images,points3D}.{bin,txt}

``image_name`` is the basename of the COLMAP image name cut at its first dot
("sub/frame_00041.jpg" -> "frame_00041"); cameras are sorted by it (as 3DGS does) and ``uid`` is
the index in that order. Poses and intrinsics
follow ``scene/cameras.py`` (world-to-camera R, t; OpenCV axes; pixel K).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np

from scene.cameras import Camera
from scene.colmap import ColmapCamera, qvec2rotmat, read_model
from scene.views import IMAGE_EXTS, SceneData, _basename, _image_size, _stem, nerfpp_radius, sized_camera

# Models that are pinhole cameras, possibly with distortion: name -> (number of intrinsic
# params, how to read fx, fy, cx, cy from them). The remaining params are distortion.
_PINHOLE_LIKE = {
    "SIMPLE_PINHOLE": (3, lambda p: (p[0], p[0], p[1], p[2])),
    "PINHOLE": (4, lambda p: (p[0], p[1], p[2], p[3])),
    "SIMPLE_RADIAL": (3, lambda p: (p[0], p[0], p[1], p[2])),
    "RADIAL": (3, lambda p: (p[0], p[0], p[1], p[2])),
    "OPENCV": (4, lambda p: (p[0], p[1], p[2], p[3])),
    "FULL_OPENCV": (4, lambda p: (p[0], p[1], p[2], p[3])),
}


def colmap_intrinsics(cam: ColmapCamera, model_file: Union[str, Path]) -> np.ndarray:
    """[3,3] pixel K of an undistorted pinhole-like COLMAP camera at its calibration size.

    Raises ValueError for non-pinhole models and for non-zero distortion."""
    spec = _PINHOLE_LIKE.get(cam.model)
    if spec is None:
        raise ValueError(f"{model_file}: camera {cam.id} has model {cam.model}, which is not supported "
                         f"(use PINHOLE or SIMPLE_PINHOLE: undistort the images with `colmap image_undistorter`)")
    n, get = spec
    p = np.asarray(cam.params, dtype=np.float64)
    if np.any(p[n:] != 0):
        raise ValueError(f"{model_file}: camera {cam.id} ({cam.model}) has non-zero distortion "
                         f"{p[n:].tolist()}; undistort the images first with `colmap image_undistorter`")
    fx, fy, cx, cy = get(p)
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _model_file(sparse: Path, stem: str) -> Path:
    b = sparse / f"{stem}.bin"
    # read_model prefers .bin when all three .bin files exist
    if all((sparse / f"{n}.bin").is_file() for n in ("cameras", "images", "points3D")):
        return b
    return sparse / f"{stem}.txt"


def _check_image_files(image_dir: Path, order, img_file: Path) -> None:
    """The image folder exists and holds every listed image; files it holds that the model does
    not list are reported in one warning line (they are not used)."""
    paths = [image_dir / _basename(im.name) for im in order]
    if not image_dir.is_dir():
        what = "is a file, not an image folder" if image_dir.exists() else "image folder not found"
        raise FileNotFoundError(
            f"{image_dir}: {what}, so {paths[0]} not found (the first of the {len(paths)} images listed in "
            f"{img_file}): put the images in {image_dir}, or name their folder with --set data.images=<folder>")
    missing = [(p, im) for p, im in zip(paths, order) if not p.is_file()]
    if missing:
        p, im = missing[0]
        more = (f"; {len(missing) - 1} more of the {len(paths)} listed images are missing too"
                if len(missing) > 1 else "")
        raise FileNotFoundError(f"{p} not found (listed as {im.name!r} in {img_file}){more}: restore the "
                                f"image, or remove its entry from {img_file}")
    listed = {p.name for p in paths}
    extra = sorted(f.name for f in image_dir.iterdir() if f.suffix.lower() in IMAGE_EXTS
                   and not f.name.startswith(".") and f.name not in listed and f.is_file())
    if extra:
        eg = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
        print(f"warning: {image_dir}: {len(extra)} image file(s) not registered in {img_file} are not used "
              f"({eg}); COLMAP registered {len(paths)} images", file=sys.stderr)


def load_scene_from_config(data, holdout_offset: int) -> SceneData:
    """``load_scene`` with the settings of a config's ``data`` section; ``holdout_offset < 0``: every
    view is a training view (the stages that read all views)."""
    return load_scene(data.source_path, images=data.images, resolution=data.resolution,
                      holdout_every=data.holdout_every, holdout_offset=None if holdout_offset < 0 else holdout_offset,
                      max_width=data.max_width)


def load_scene(source_path: Union[str, Path], images: str = "images", resolution: int = -1,
               holdout_every: int = 8, holdout_offset: Optional[int] = None,
               max_width: int = 1600, verify_images: bool = True) -> SceneData:
    """Loads ``<source_path>/sparse/0`` and the matching image files.

    Every error (a missing scene or image folder, a listed image that is missing, a truncated or
    corrupt image, an unsupported or distorted camera, a malformed model file) is a ValueError or
    FileNotFoundError whose message starts with the offending path; image files that the model does
    not list are ignored with a one-line warning on stderr (COLMAP often registers only a subset).
    ``verify_images`` decodes every image once (cheap: JPEGs at 1/8 scale) so that a truncated file
    is reported here rather than when training first reaches it.

    Intrinsics are scaled from COLMAP's calibration size to the image file's size, then to the
    ``resolution`` rule (see ``target_size_3dgs``). With ``holdout_offset`` set, sorted camera ``i``
    is a test view iff ``i % holdout_every == holdout_offset`` (3DGS: 0, COS3D: 2).

    A folder without ``sparse/0`` but with ``transforms_train.json`` is a Blender / NeRF scene
    (``scene.blender.load_blender_scene``): its frames name their own image files, so ``images`` is
    ignored, and the split is the format's own: with ``holdout_offset`` set (any value, and
    ``holdout_every`` unused) the test views are those of ``transforms_test.json``, without it they
    are training views too."""
    root = Path(source_path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: scene folder not found (check -s / data.source_path)")
    if not root.is_dir():
        raise ValueError(f"{root}: is a file, not a scene folder (check -s / data.source_path)")
    sparse = root / "sparse" / "0"
    if not sparse.is_dir():
        if (root / "transforms_train.json").is_file():  # a Blender / NeRF scene: scene/blender.py
            from scene.blender import load_blender_scene
            return load_blender_scene(root, resolution=resolution, max_width=max_width,
                                      verify_images=verify_images, use_test_split=holdout_offset is not None)
        raise FileNotFoundError(f"{sparse} not found, nor {root / 'transforms_train.json'}: this is neither a "
                                f"COLMAP scene nor a Blender/NeRF one: run COLMAP (or the synthetic generator) first")
    if holdout_offset is not None and not (holdout_every >= 1 and 0 <= holdout_offset < holdout_every):
        raise ValueError(f"holdout_offset must be in [0, {holdout_every}), got {holdout_offset} "
                         f"(holdout_every={holdout_every})")
    cams, imgs, pts = read_model(sparse, tracks=False)
    cam_file, img_file = _model_file(sparse, "cameras"), _model_file(sparse, "images")
    image_dir = root / images
    if not imgs:
        raise ValueError(f"{img_file}: the COLMAP model registers no images: re-run COLMAP on this scene")

    # 3DGS sorts by image_name (the stem); the full name only breaks ties deterministically
    order = sorted(imgs.values(), key=lambda im: (_stem(im.name), im.name))
    for a, b in zip(order, order[1:]):
        if _stem(a.name) == _stem(b.name):
            raise ValueError(f"{img_file}: images {a.name!r} and {b.name!r} have the same image_name "
                             f"{_stem(a.name)!r}; image names must be unique")
    for im in order:  # the model itself first: cameras, models, distortion
        if im.camera_id not in cams:
            raise ValueError(f"{img_file}: image {im.name!r} uses camera {im.camera_id}, "
                             f"which is not in {cam_file}")
        colmap_intrinsics(cams[im.camera_id], cam_file)
    _check_image_files(image_dir, order, img_file)

    cameras: list[Camera] = []
    noted: list = []
    for uid, im in enumerate(order):
        cc = cams[im.camera_id]
        K = colmap_intrinsics(cc, cam_file)
        path = image_dir / _basename(im.name)
        try:
            R = qvec2rotmat(im.qvec)
        except ValueError as e:
            raise ValueError(f"{img_file}: image {im.name!r}: {e}") from None
        cam = Camera(uid=uid, image_name=_stem(im.name), R=R,
                     t=np.asarray(im.tvec, dtype=np.float64).copy(), K=K, width=int(cc.width),
                     height=int(cc.height), image_path=path,
                     extra={"colmap_image_id": im.id, "colmap_camera_id": cc.id})
        # COLMAP's size is the calibration size: K follows the image file, then the resolution rule
        cameras.append(sized_camera(cam, _image_size(path, img_file, verify_images), resolution, max_width, noted))

    if holdout_offset is None:
        train, test = cameras, []
    else:
        test = [c for c in cameras if c.uid % holdout_every == holdout_offset]
        train = [c for c in cameras if c.uid % holdout_every != holdout_offset]
    extent = nerfpp_radius(np.array([c.center for c in train]).reshape(-1, 3))
    return SceneData(source_path=root, train_cameras=train, test_cameras=test,
                     points_xyz=pts.xyz.astype(np.float32).reshape(-1, 3),
                     points_rgb=(pts.rgb.astype(np.float32) / 255.0).reshape(-1, 3),
                     cameras_extent=extent)
