"""The typed configuration of every stage.

One dataclass per section; every field carries a one-line ``help`` (written into
``arguments/default.yaml`` as its comment). Defaults are the paper / official-code settings; the
source of each constant is named in its help text. ``arguments/default.yaml`` is generated from
this file (``python -m arguments --write-default``) and a test checks that the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def F(default, help: str, min=None, choices=None):  # noqa: N802 - short on purpose: the schema reads like a table
    """A dataclass field with a help string and optional bounds: ``min`` (numbers) or ``choices``
    (allowed values), checked wherever a value is set (lists are copied per instance)."""
    meta = {"help": help, "min": min, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    device: str = F("auto", "auto | cpu | cuda | cuda:N: where tensors live (auto = cuda if available)")
    seed: int = F(0, "random seed of every stage (COS3D's safe_state uses 0)")
    num_threads: int = F(0, "torch CPU threads; 0 = torch's default (one per core)", min=0)
    progress: bool = F(True, "show tqdm progress bars")
    deterministic: bool = F(True, "bit-identical reruns: torch's deterministic algorithms (warn-only) and, on CUDA, "
                                  "a fixed cuBLAS workspace; gsplat's atomic adds stay non-deterministic (README)")


@dataclass
class DataConfig:
    source_path: str = F("", "scene folder with images/ and sparse/0 (train.py -s); later stages and query/render use the run's")
    images: str = F("images", "image folder name inside the scene folder")
    resolution: int = F(-1, "-1: native, but at most max_width wide; 1/2/4/8: downscale factor; other >0: target width (3DGS -r)")
    max_width: int = F(1600, "widest image used at resolution -1 (3DGS: 1600)", min=1)
    holdout_every: int = F(8, "every k-th sorted view is a held-out test view (3DGS --eval: 8)", min=1)
    white_background: bool = F(False, "white instead of black background (3DGS -w; LERF-OVS: black)")


@dataclass
class RendererConfig:
    backend: str = F("auto", "auto | torch | cpp | gsplat (auto: gsplat on CUDA, else the C++ CPU kernel, else torch)",
                    choices=["auto", "torch", "cpp", "gsplat"])
    tile_size: int = F(16, "tile edge in pixels (gsplat: 16)", min=1)
    near: float = F(0.01, "near plane; Gaussians closer are culled (gsplat: 0.01)")
    far: float = F(1e10, "far plane (gsplat: 1e10)")

    def kwargs(self) -> dict:
        """The keyword arguments of ``gaussian_renderer.render`` that this section sets."""
        return {"backend": self.backend, "tile_size": self.tile_size, "near": self.near, "far": self.far}


@dataclass
class DensifyConfig:
    enabled: bool = F(True, "adaptive density control through gsplat.strategy.DefaultStrategy")
    refine_start_iter: int = F(500, "first densification step (3DGS: 500)")
    refine_stop_iter: int = F(15000, "no densification after this step (3DGS: 15000)")
    refine_every: int = F(100, "densify every k steps (3DGS: 100)", min=1)
    reset_every: int = F(3000, "opacity reset period (3DGS: 3000)", min=1)
    grow_grad2d: float = F(0.0002, "view-space gradient threshold for clone/split (3DGS: 0.0002)")
    grow_scale3d: float = F(0.01, "clone if max scale <= this * scene extent, else split (3DGS percent_dense: 0.01)")
    prune_opa: float = F(0.005, "prune Gaussians below this opacity (3DGS: 0.005)")
    prune_scale3d: float = F(0.1, "prune Gaussians larger than this * scene extent (3DGS: 0.1)")


@dataclass
class RGBConfig:
    iterations: int = F(30000, "3DGS training steps (3DGS: 30000)", min=1)
    holdout_offset: int = F(0, "test views are sorted index % holdout_every == this (3DGS --eval: 0); -1 = train on all")
    sh_degree: int = F(3, "max SH degree (3DGS: 3)", choices=[0, 1, 2, 3])
    sh_degree_interval: int = F(1000, "raise the active SH degree every k steps (3DGS: 1000)", min=1)
    init: str = F("points", "points (COLMAP points3D) | random (uniform cube, 3DGS --random init)",
                   choices=["points", "random"])
    random_init_points: int = F(100000, "number of points for init=random (3DGS: 100000)", min=1)
    init_opacity: float = F(0.1, "initial opacity (3DGS: 0.1)")
    freeze_means: bool = F(False, "keep every Gaussian at its initial point (OpenGaussian --frozen_init_pts, ScanNet: "
                                  "one Gaussian per mesh vertex); needs init=points and densify.enabled=false")
    lambda_dssim: float = F(0.2, "loss = (1-l)*L1 + l*(1-SSIM) (3DGS: 0.2)")
    means_lr: float = F(1.6e-4, "initial position lr, times the scene extent (3DGS: 0.00016)")
    means_lr_final: float = F(1.6e-6, "final position lr, times the scene extent (3DGS: 0.0000016)")
    sh0_lr: float = F(0.0025, "DC colour lr (3DGS feature_lr: 0.0025)")
    shN_lr: float = F(0.000125, "higher-order SH lr (3DGS: feature_lr / 20)")
    opacities_lr: float = F(0.05, "opacity lr (3DGS 2023: 0.05)")
    scales_lr: float = F(0.005, "log-scale lr (3DGS: 0.005)")
    quats_lr: float = F(0.001, "rotation lr (3DGS: 0.001)")
    random_background: bool = F(False, "random background colour per step (3DGS --random_background)")
    batch_views: int = F(0, "views rendered per step, all ranks together, each view's loss / batch_views; 0 = one per "
                            "rank (1 in one process, as 3DGS; K under torchrun --nproc_per_node=K, docs/scale_out.md)", min=0)
    eval_every: int = F(7000, "PSNR/SSIM on held-out views every k steps (and at the end); 0 = only at the end", min=0)
    checkpoint_every: int = F(5000, "write a resumable checkpoint every k steps; 0 = only at the end", min=0)
    densify: DensifyConfig = field(default_factory=DensifyConfig, metadata={"help": "densification schedule"})


@dataclass
class InstanceConfig:
    iterations: int = F(30000, "instance-field training steps, one view each (COS3D: 30000; 3000 = the paper's 8-minute setting)", min=1)
    feature_dim: int = F(16, "instance feature channels per Gaussian (COS3D: 16)", min=1)
    lr: float = F(0.0025, "Adam lr of the instance features (COS3D feature_lr: 0.0025), constant")
    sam_level: int = F(3, "SAM level of the _s.npy maps supervising the field: 0 default, 1 s, 2 m, 3 l (COS3D: 3)",
                        choices=[0, 1, 2, 3])
    features_folder: str = F("language_features", "folder of the LangSplat _s.npy/_f.npy files inside the scene")
    holdout_offset: int = F(2, "views with sorted index % holdout_every == this are not trained on (COS3D --eval: 2); -1 = all")
    num_samples: int = F(32768, "pixels sampled per step, with replacement (COS3D/Unified-Lift: 32768)", min=1)
    min_cluster_size: int = F(20, "clusters need MORE than this many samples (COS3D: 20)")
    phi_scale: float = F(10.0, "adaptive temperature phi <- clip(phi_scale * phi, phi_min, phi_max) (COS3D: 10)")
    phi_min: float = F(0.5, "lower clip of phi (COS3D: 0.5)")
    phi_max: float = F(1.0, "upper clip of phi (COS3D: 1.0)")
    norm_weight: float = F(100.0, "weight of mean (||F||-1)^2 on rendered features (COS3D: 100)")
    loss_scale: float = F(0.001, "total loss multiplier (COS3D: 1e-3)")
    batch_views: int = F(0, "views per step, all ranks together, each view's loss / batch_views; 0 = one per rank "
                            "(1 in one process, as COS3D; K under torchrun --nproc_per_node=K, docs/scale_out.md)", min=0)
    preview_every: int = F(500, "write a PCA preview PNG of the rendered features every k steps; 0 = never (COS3D: 500)", min=0)
    checkpoint_every: int = F(5000, "write a resumable checkpoint every k steps; 0 = only at the end", min=0)


@dataclass
class MappingConfig:
    kind: str = F("kernel", "kernel (training-free Nadaraya-Watson, COS3D default) | mlp (16->512 decoder, COS3D autoencoder/)",
                   choices=["kernel", "mlp"])
    sam_level: int = F(3, "SAM level whose masks form the instance<->CLIP pairs; must equal instance.sam_level (COS3D: 3)",
                        choices=[0, 1, 2, 3])
    top_k: int = F(25, "kernel: anchors per Gaussian (COS3D Grounding_3D.py: 25)", min=1)
    sigma: float = F(0.1, "kernel: bandwidth of exp(-d^2 / 2 sigma^2) on cosine distance (COS3D: 0.1)")
    smooth_k: int = F(10, "3D smoothing: mean over this many nearest Gaussians in xyz, self included; <= 1 = off (COS3D: 10)")
    chunk_size: int = F(65536, "Gaussians per chunk in the kernel / smoothing (memory bound, not results)", min=1)
    mlp_epochs: int = F(100, "mlp: training epochs (COS3D autoencoder: 100)", min=1)
    mlp_lr: float = F(0.001, "mlp: Adam lr (COS3D bash_run.sh: 1e-3)")
    mlp_batch_size: int = F(64, "mlp: batch size (COS3D: 64)", min=1)
    mlp_hidden: list[int] = F([32, 64, 128, 256, 256], "mlp: hidden widths of the decoder (COS3D: 32 64 128 256 256)")
    mlp_cos_weight: float = F(0.001, "mlp: loss = MSE + w * (1 - cosine) (COS3D: 0.001)")
    factored: bool = F(True, "kernel: keep the field factored (top-k anchor weights + neighbour lists, exact, "
                             "docs/method.md §4.5): a query costs O(N (top_k + smooth_k)), not O(N x 512); "
                             "false: the dense N x 512 field in half floats (the release's form)")


@dataclass
class QueryConfig:
    mode: str = F("collaborative", "collaborative (COS3D) | language_only (threshold the relevancy) | instance_only "
                                   "(the best of the instance field's clusters by their mean language feature) | "
                                   "instance_seed (one instance region around the best seed)",
                 choices=["collaborative", "language_only", "instance_only", "instance_seed"])
    text_encoder: str = F("auto", "auto (the encoder that made the scene's features: manifest.json, synthetic.json, "
                                   "else LangSplat's OpenCLIP ViT-B-16 laion2b) | hash (synthetic scenes) | table "
                                   "(phrase->vector file) | openclip (weights from ckpts/)",
                          choices=["auto", "hash", "table", "openclip"])
    text_table: str = F("", "table encoder: JSON/pt phrase->vector file; empty = <scene>/text_features.json")
    text_model: str = F("", "openclip encoder: the open_clip model of the text tower (e.g. ViT-B-16, ViT-B-16-SigLIP); "
                            "empty = the one recorded in the features' manifest.json (another one is refused)")
    negatives: list[str] = F(["object", "things", "stuff", "texture"], "canonical negative phrases (LERF / LangSplat)")
    temperature: float = F(10.0, "relevancy softmax temperature (LERF: 10)")
    score_thresh: float = F(0.5, "tau: seed threshold and region acceptance on the rescaled relevancy (COS3D: 0.5)")
    seed_opacity: float = F(0.1, "seeds need opacity above this (COS3D: 0.1)")
    multipliers: list[float] = F([0.4, 0.3, 0.2, 0.1], "region thresholds T = 1 - m*d, loosest first (COS3D: 0.4 0.3 0.2 0.1)")
    language_threshold: float = F(0.5, "language_only: keep Gaussians whose rescaled relevancy exceeds this")
    instance_multiplier: float = F(0.3, "instance_only: cluster threshold T = 1 - m*d around each leader; "
                                        "instance_seed: region threshold around the best seed")
    connect_radius: float = F(0.0, "collaborative: 0 = the paper's rule; r > 0 = a region grows only over Gaussians "
                                   "connected to its seed, neighbours within r x the median nearest-neighbour "
                                   "distance (arguments/cos3d_plus.yaml; docs/method.md §5.3.1)", min=0.0)
    contrast_queries: bool = F(False, "false = the paper's relevancy; true = each query's negatives also hold the other "
                                      "queries asked with it (query.py's list, the labelled categories; docs/method.md §5.1.1)")
    mask_coverage_min: float = F(0.0, "collaborative: 0 = the paper's rule; c > 0 = seeds and regions use only Gaussians "
                                      "whose image footprint SAM masks covered at least this fraction of (stages/coverage.py; "
                                      "arguments/cos3d_plus.yaml; docs/method.md §5.3.2)", min=0.0)
    cluster_min_frac: float = F(0.001, "instance_only: clusters of fewer than this fraction of the Gaussians are not "
                                       "objects and never returned (docs/method.md §5.4)", min=0.0)
    part_scale: float = F(0.5, "query.py --granularity part / --hierarchy: the accepted regions' thresholds become "
                               "T = 1 - s*m*d with this s < 1 (tighter, inside each region; docs/method.md §5.8)", min=0.0)
    group_scale: float = F(2.0, "query.py --granularity group / --hierarchy: T = 1 - s*m*d around the same seeds with "
                                "this s > 1 (looser, added to the object selection; docs/method.md §5.8)", min=1.0)
    queries: list[str] = F([], "text queries; empty = the categories of the scene's labelled frames")


@dataclass
class EvalConfig:
    label_root: str = F("", "LERF-OVS label folder (<label_root>/<scene>/...); empty = <scene>/../label (OpenGaussian layout)")
    silhouette_alpha: float = F(0.7, "a pixel of a selection render is in the mask when its alpha > this (OpenGaussian/COS3D: 0.7)")
    binarize: int = F(10, "gt and prediction PNGs are foreground where > this (OpenGaussian: 10)", min=0)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "run-wide settings"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "scene loading"})
    renderer: RendererConfig = field(default_factory=RendererConfig, metadata={"help": "Gaussian rasterizer"})
    rgb: RGBConfig = field(default_factory=RGBConfig, metadata={"help": "stage 0: vanilla 3DGS"})
    instance: InstanceConfig = field(default_factory=InstanceConfig, metadata={"help": "stage 1: instance field"})
    mapping: MappingConfig = field(default_factory=MappingConfig, metadata={"help": "stage 2: instance -> language mapping"})
    query: QueryConfig = field(default_factory=QueryConfig, metadata={"help": "text query -> 3D selection"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "selection rendering and LERF-OVS scoring"})

