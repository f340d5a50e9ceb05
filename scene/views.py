"""What every scene format shares: ``SceneData`` (sorted cameras + points), the image-size rules of
3DGS and LangSplat, image files' sizes, image names, and the 3DGS camera-extent radius.
``scene/dataset.py`` (COLMAP) and ``scene/blender.py`` (Blender / NeRF transforms) build on it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scene.cameras import Camera

_POWERS_OF_TWO = (1, 2, 4, 8)


@dataclass
class SceneData:
    source_path: Path
    train_cameras: list[Camera]
    test_cameras: list[Camera]
    points_xyz: np.ndarray     # [P,3] float32 sparse COLMAP points (P may be 0)
    points_rgb: np.ndarray     # [P,3] float32 colours in [0, 1]
    cameras_extent: float      # 3DGS getNerfppNorm radius: 1.1 * max distance of centres from their mean

    @property
    def all_cameras(self) -> list[Camera]:
        """Train and test cameras together, sorted by image name (= by uid)."""
        return sorted(self.train_cameras + self.test_cameras, key=lambda c: c.uid)


# Two resize rules, on purpose: the training views follow 3DGS (width capped at 1600 px, 1/2/4/8 are
# divisors), the SAM/CLIP preprocessing follows LangSplat (height capped at 1080 px, any R > 0 is a
# width). COS3D inherits both, so a LERF-OVS id map can be smaller than its view (``load_seg``
# resizes it back, same aspect). Both answer (width, height) for an image of (width, height).
GS_MAX_WIDTH = 1600          # 3DGS utils/camera_utils.py loadCam: wider images are downscaled
LANGSPLAT_MAX_HEIGHT = 1080  # LangSplat preprocess.py: images over 1080 px high are downscaled


def target_size_3dgs(width: int, height: int, resolution: int, max_width: int = GS_MAX_WIDTH) -> tuple[int, int]:
    """The 3DGS ``--resolution`` rule (``utils/camera_utils.loadCam``), used for the training views.

    -1: native, but downscaled to ``max_width`` wide if wider; 1/2/4/8: divided by it (Python
    ``round``); any other positive value: that width (height ``floor(h * r / w)``, as 3DGS's
    ``int(h / (w / r))`` without its float rounding slip)."""
    if resolution in _POWERS_OF_TWO:
        return round(width / resolution), round(height / resolution)
    if resolution == -1:
        if width <= max_width:
            return width, height
        target = max_width
    elif resolution > 0:
        target = int(resolution)
    else:
        raise ValueError(f"resolution must be -1, 1, 2, 4, 8 or a positive target width, got {resolution}")
    return target, max(1, (height * target) // width)


def target_size_langsplat(width: int, height: int, resolution: int = -1,
                          max_height: int = LANGSPLAT_MAX_HEIGHT) -> tuple[int, int]:
    """LangSplat's rule (``preprocess.py``), used for the images SAM and CLIP see (``preprocess.run``).

    -1: scale = H / ``max_height`` if higher, else native; R > 0: scale = W / R (R is a width, 1/2/4/8
    included); new size ``(int(W / scale), int(H / scale))`` (truncated, as LangSplat)."""
    if resolution == -1:
        scale = height / max_height if height > max_height else 1.0
    elif resolution > 0:
        scale = width / resolution
    else:
        raise ValueError(f"--resolution must be -1 or a positive target width, got {resolution}")
    return int(width / scale), int(height / scale)


IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _image_size(path: Path, img_file: Path, verify: bool = True) -> tuple[int, int]:
    """(width, height) of an image file; with ``verify`` the whole file is decoded (JPEGs at 1/8
    scale, which still reads every byte), so a truncated or corrupt image is an error here, before
    any stage writes anything, instead of in the middle of training."""
    from PIL import Image

    fix = f"replace the file, or remove its entry from {img_file}"
    try:
        im = Image.open(path)
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"{path}: not a readable image ({_first_line(e)}): {fix}") from None
    with im:
        size = im.size
        if verify:
            try:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
            except (OSError, ValueError, SyntaxError) as e:
                raise ValueError(f"{path}: cannot decode image, the file is truncated or corrupt "
                                 f"({_first_line(e)}): {fix}") from None
    return size


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _basename(colmap_name: str) -> str:
    return colmap_name.replace("\\", "/").split("/")[-1]


def _stem(colmap_name: str) -> str:
    """LangSplat/COS3D image_name: the basename cut at its FIRST dot."""
    return _basename(colmap_name).split(".")[0]


def nerfpp_radius(centers: np.ndarray) -> float:
    """3DGS ``getNerfppNorm`` radius of [N,3] camera centres (1.0 when degenerate)."""
    if len(centers) == 0:
        return 1.0
    c = np.asarray(centers, dtype=np.float64)
    r = 1.1 * float(np.max(np.linalg.norm(c - c.mean(0), axis=1)))
    return r if r > 0 else 1.0


def sized_camera(cam: Camera, file_size: tuple[int, int], resolution: int, max_width: int = GS_MAX_WIDTH,
                 noted: list | None = None) -> Camera:
    """``cam`` (intrinsics at its calibration size) scaled to its image file's ``file_size`` and then to
    the 3DGS ``resolution`` rule (``target_size_3dgs``). The first camera downscaled by the 1600 px cap
    prints a note; ``noted`` (a list shared by the calls of one scene) keeps it to one per scene."""
    fw, fh = file_size
    if (fw, fh) != (cam.width, cam.height):
        cam = cam.scaled(fw, fh)
    w, h = target_size_3dgs(fw, fh, resolution, max_width)
    if resolution == -1 and (w, h) != (fw, fh) and noted is not None and not noted:
        print(f"[load_scene] images wider than {max_width} px are downscaled to {max_width} wide "
              f"(pass resolution=1 to keep the native size)")
        noted.append(True)
    if (w, h) != (cam.width, cam.height):
        cam = cam.scaled(w, h)
    return cam
