"""The typed configuration of every stage.

One dataclass per section; every field carries a one-line ``help`` (written into
``arguments/default.yaml`` as its comment). Defaults are the paper / official-code settings; the
source of each constant is named in its help text. ``arguments/default.yaml`` is generated from
this file (``python -m arguments --write-default``) and a test checks that the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def F(default, help: str):  # noqa: N802 - short on purpose: the schema reads like a table
    """A dataclass field with a help string (lists are copied per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    device: str = F("auto", "auto | cpu | cuda | cuda:N: where tensors live (auto = cuda if available)")
    seed: int = F(0, "random seed of every stage (COS3D's safe_state uses 0)")
    num_threads: int = F(0, "torch CPU threads; 0 = torch's default")
    progress: bool = F(True, "show tqdm progress bars")


@dataclass
class DataConfig:
    source_path: str = F("", "scene folder with images/ and sparse/0 (empty = the generated default scene)")
    images: str = F("images", "image folder name inside the scene folder")
    resolution: int = F(-1, "-1: native, but at most max_width wide; 1/2/4/8: downscale factor; other >0: target width (3DGS -r)")
    max_width: int = F(1600, "widest image used at resolution -1 (3DGS: 1600)")
    holdout_every: int = F(8, "every k-th sorted view is a held-out test view (3DGS --eval: 8)")
    white_background: bool = F(False, "white instead of black background (3DGS -w; LERF-OVS: black)")


@dataclass
class RendererConfig:
    backend: str = F("auto", "auto | torch | cpp | gsplat (auto: gsplat on CUDA, else the C++ CPU kernel, else torch)")
    tile_size: int = F(16, "tile edge in pixels (gsplat: 16)")
    near: float = F(0.01, "near plane; Gaussians closer are culled (gsplat: 0.01)")
    far: float = F(1e10, "far plane (gsplat: 1e10)")


@dataclass
class DensifyConfig:
    enabled: bool = F(True, "adaptive density control through gsplat.strategy.DefaultStrategy")
    refine_start_iter: int = F(500, "first densification step (3DGS: 500)")
    refine_stop_iter: int = F(15000, "no densification after this step (3DGS: 15000)")
    refine_every: int = F(100, "densify every k steps (3DGS: 100)")
    reset_every: int = F(3000, "opacity reset period (3DGS: 3000)")
    grow_grad2d: float = F(0.0002, "view-space gradient threshold for clone/split (3DGS: 0.0002)")
    grow_scale3d: float = F(0.01, "clone if max scale <= this * scene extent, else split (3DGS percent_dense: 0.01)")
    prune_opa: float = F(0.005, "prune Gaussians below this opacity (3DGS: 0.005)")
    prune_scale3d: float = F(0.1, "prune Gaussians larger than this * scene extent (3DGS: 0.1)")


@dataclass
class RGBConfig:
    iterations: int = F(30000, "3DGS training steps (3DGS: 30000)")
    holdout_offset: int = F(0, "test views are sorted index % holdout_every == this (3DGS --eval: 0); -1 = train on all")
    sh_degree: int = F(3, "max SH degree (3DGS: 3)")
    sh_degree_interval: int = F(1000, "raise the active SH degree every k steps (3DGS: 1000)")
    init: str = F("points", "points (COLMAP points3D) | random (uniform cube, 3DGS --random init)")
    random_init_points: int = F(100000, "number of points for init=random (3DGS: 100000)")
    init_opacity: float = F(0.1, "initial opacity (3DGS: 0.1)")
    lambda_dssim: float = F(0.2, "loss = (1-l)*L1 + l*(1-SSIM) (3DGS: 0.2)")
    means_lr: float = F(1.6e-4, "initial position lr, times the scene extent (3DGS: 0.00016)")
    means_lr_final: float = F(1.6e-6, "final position lr, times the scene extent (3DGS: 0.0000016)")
    sh0_lr: float = F(0.0025, "DC colour lr (3DGS feature_lr: 0.0025)")
    shN_lr: float = F(0.000125, "higher-order SH lr (3DGS: feature_lr / 20)")
    opacities_lr: float = F(0.05, "opacity lr (3DGS 2023: 0.05)")
    scales_lr: float = F(0.005, "log-scale lr (3DGS: 0.005)")
    quats_lr: float = F(0.001, "rotation lr (3DGS: 0.001)")
    random_background: bool = F(False, "random background colour per step (3DGS --random_background)")
    eval_every: int = F(7000, "PSNR/SSIM on held-out views every k steps (and at the end); 0 = only at the end")
    checkpoint_every: int = F(5000, "write a resumable checkpoint every k steps; 0 = only at the end")
    densify: DensifyConfig = field(default_factory=DensifyConfig, metadata={"help": "densification schedule"})


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "run-wide settings"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "scene loading"})
    renderer: RendererConfig = field(default_factory=RendererConfig, metadata={"help": "Gaussian rasterizer"})
    rgb: RGBConfig = field(default_factory=RGBConfig, metadata={"help": "stage 0: vanilla 3DGS"})

