"""Pinhole cameras: the one camera convention of the project.

Convention (the same as COLMAP and gsplat):

* ``R`` [3,3], ``t`` [3]: **world-to-camera**, ``x_cam = R @ x_world + t``.
* Camera axes are OpenCV's: +x right, +y down, +z forward (looking direction).
* ``K`` [3,3]: intrinsics in **pixels** of the image as rendered (after any downscale):
  ``u = fx * x/z + cx``, ``v = fy * y/z + cy``, where the centre of the top-left pixel is
  (0.5, 0.5), i.e. pixel (i, j) covers ``[j, j+1) x [i, i+1)``.

A camera knows its image by path; the pixels are loaded on demand (``load_image``) so that a
scene with hundreds of views does not sit in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch


@dataclass
class Camera:
    uid: int                      # index in the sorted camera list
    image_name: str               # file stem, e.g. "frame_00041" (LangSplat/COS3D image_name)
    R: np.ndarray                 # [3,3] float64, world -> camera rotation
    t: np.ndarray                 # [3]   float64, world -> camera translation
    K: np.ndarray                 # [3,3] float64, pixel intrinsics at (width, height)
    width: int
    height: int
    image_path: Optional[Path] = None   # file to load the RGB image from (any size; resized)
    extra: dict = field(default_factory=dict)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def viewmat(self) -> np.ndarray:
        """[4,4] world-to-camera matrix."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        return -self.R.T @ self.t

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    def viewmat_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(self.viewmat, dtype=dtype, device=device)

    def K_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(self.K, dtype=dtype, device=device)

    @property
    def fov_y(self) -> float:
        """Vertical field of view in radians, ``2 atan(H / (2 fy))``."""
        return float(2.0 * np.arctan(0.5 * self.height / self.fy))

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera rendered at another resolution (intrinsics rescaled)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, :] *= sx
        K[1, :] *= sy
        return replace(self, K=K, width=int(width), height=int(height))

    def load_image(self) -> torch.Tensor:
        """The view's image as float32 [H, W, 3] in [0, 1], resized to (width, height).

        An RGBA image is composited on black (the 3DGS loaders keep only RGB)."""
        from PIL import Image

        if self.image_path is None:
            raise ValueError(f"camera {self.image_name!r} has no image file")
        try:
            with Image.open(self.image_path) as im:
                im = im.convert("RGB")
                if im.size != (self.width, self.height):
                    im = im.resize((self.width, self.height), Image.LANCZOS)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {self.image_path}: {e}") from None
        return torch.from_numpy(arr)


def look_at(center, target, up=(0.0, 0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of a camera at ``center`` looking at ``target``.

    OpenCV axes: the camera's +y (image down) is as close to ``-up`` as possible."""
    center = np.asarray(center, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - center
    z /= np.linalg.norm(z)
    up = np.asarray(up, dtype=np.float64)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:  # looking along up: pick any perpendicular
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=0)  # rows: camera axes in world coordinates
    t = -R @ center
    return R, t


def camera_from_pose(R_c2w, center, fov_y: float, width: int, height: int, image_name: str = "viewer",
                     uid: int = -1) -> Camera:
    """A camera from a camera-to-world rotation (its columns: the camera's x right, y down and z forward
    axes in world coordinates, the convention of web viewers such as viser), its centre and its
    vertical field of view in radians; square pixels, principal point at the image centre."""
    R_c2w = np.asarray(R_c2w, dtype=np.float64).reshape(3, 3)
    center = np.asarray(center, dtype=np.float64).reshape(3)
    if not (0.0 < float(fov_y) < np.pi) or int(width) < 1 or int(height) < 1:
        raise ValueError(f"camera_from_pose: fov_y {fov_y!r} must be in (0, pi) and the size {width}x{height} "
                         f"positive")
    f = 0.5 * int(height) / np.tan(0.5 * float(fov_y))
    R = R_c2w.T
    return Camera(uid=uid, image_name=image_name, R=R, t=-R @ center, K=intrinsics(f, f, 0.5 * int(width),
                                                                                   0.5 * int(height)),
                  width=int(width), height=int(height))


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
