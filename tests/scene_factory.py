"""Tiny on-disk scenes for tests: known Gaussians rendered into images + a COLMAP text model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scene.cameras import Camera, intrinsics, look_at
from scene.colmap import ColmapCamera, ColmapImage, ColmapPoints, rotmat2qvec, write_model
from scene.gaussian_model import rgb_to_sh


def known_gaussians(n: int = 120, seed: int = 0) -> dict:
    """A small, colourful blob scene: n opaque-ish Gaussians in a unit cube, degree-0 SH."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.2
    return {
        "means": means,
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.08 + 0.05),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.full((n,), 2.0),  # sigmoid(2) = 0.88
        "sh0": rgb_to_sh(torch.rand(n, 3, generator=g))[:, None, :],
        "shN": torch.zeros(n, 0, 3),
    }


def ring_cameras(n_views: int, width: int, height: int, radius: float = 3.0) -> list[Camera]:
    cams = []
    K = intrinsics(0.9 * width, 0.9 * width, width / 2, height / 2)
    for i in range(n_views):
        a = 2 * np.pi * i / n_views
        elev = 0.6 * np.sin(3 * a)
        center = np.array([radius * np.cos(a), radius * np.sin(a), elev])
        R, t = look_at(center, np.zeros(3))
        cams.append(Camera(uid=i, image_name=f"frame_{i + 1:05d}", R=R, t=t, K=K, width=width, height=height))
    return cams


def write_gaussian_scene(root: Path, gaussians: dict, n_views: int = 16, width: int = 64, height: int = 48,
                         n_points: int = 400, seed: int = 0) -> Path:
    """Render ``gaussians`` (torch backend) into ``root/images`` and write ``root/sparse/0`` (text)."""
    from gaussian_renderer import render

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cams = ring_cameras(n_views, width, height)
    colmap_cams = {1: ColmapCamera(1, "PINHOLE", width, height, np.array([cams[0].K[0, 0], cams[0].K[1, 1],
                                                                          cams[0].K[0, 2], cams[0].K[1, 2]]))}
    images = {}
    with torch.no_grad():
        for cam in cams:
            img = render(gaussians, cam, backend="torch").color.clamp(0, 1)
            Image.fromarray((img.numpy() * 255 + 0.5).astype(np.uint8)).save(root / "images" / f"{cam.image_name}.png")
            images[cam.uid + 1] = ColmapImage(cam.uid + 1, rotmat2qvec(cam.R), cam.t.copy(), 1,
                                              f"{cam.image_name}.png", np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(gaussians["means"]), n_points)
    xyz = gaussians["means"].numpy()[idx] + rng.normal(0, 0.03, (n_points, 3))
    rgb = np.clip(gaussians["sh0"][idx, 0].numpy() * 0.28209479177387814 + 0.5, 0, 1)
    pts = ColmapPoints(np.arange(1, n_points + 1), xyz, (rgb * 255).astype(np.uint8), np.zeros(n_points))
    write_model(root / "sparse" / "0", colmap_cams, images, pts, ext=".txt")
    return root


# ---------------------------------------------------------------------------------------------
# A generated scene with ground truth, trained with a short schedule (~15-20 s on 2 cores): three
# large objects close to the camera, so that prompts on them can be scored against their gt masks.
TINY_SCENE = {"n_views": 10, "width": 64, "height": 48, "n_objects": 3, "n_labelled": 2, "n_points": 1500,
              "layout_radius": 0.3, "distance": 1.0}
TINY_SCHEDULE = ["--set", "rgb.iterations=300", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
                 "--set", "rgb.densify.refine_start_iter=100", "--set", "rgb.densify.refine_stop_iter=250",
                 "--set", "rgb.densify.reset_every=100000", "--set", "rgb.sh_degree_interval=100",
                 "--set", "instance.iterations=600", "--set", "instance.lr=0.01",
                 "--set", "instance.num_samples=8192", "--set", "instance.preview_every=0",
                 "--set", "instance.checkpoint_every=0", "--set", "run.progress=false", "--set", "run.num_threads=1"]


def train_tiny_run(root: Path, name: str, seed: int = 0, scene: dict | None = None) -> Path:
    """Generate ``<root>/data/<name>`` (preset clean, ``seed``, ``scene`` overrides: default TINY_SCENE)
    and train rgb, instance and mapping with TINY_SCHEDULE into ``<root>/out/<name>``; returns the run dir."""
    from preprocess.synthetic import generate_scene
    from train import main as train_main

    generate_scene(root / "data", name, seed=seed, preset="clean", overrides=scene or TINY_SCENE, progress=False)
    run = root / "out" / name
    for stage in ("rgb", "instance", "mapping"):
        assert train_main(["--stage", stage, "-s", str(root / "data" / name), "-m", str(run), *TINY_SCHEDULE]) == 0
    return run


def one_line_error(capsys, *needles) -> None:
    """What a CLI wrote to stderr is one ``error: ...`` line, no traceback, containing every needle."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
