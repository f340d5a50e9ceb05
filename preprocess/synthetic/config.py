"""Knobs of the synthetic scene generator: scene size/cameras (``SceneConfig``) and the noise
that imitates SAM/CLIP failure modes (``NoiseKnobs``), with the presets ``clean``, ``default``,
``hard`` and ``large``. ``hard`` also turns on the failure-mode knobs of real per-mask CLIP
features (crop context, part semantics, look-alike confusion, shared name words, drifting
surfaces), which are off in the other presets.

Every probability is drawn independently per view (and per mask) unless
``NoiseKnobs.per_view`` is False, in which case the segmentation decisions of an object are
the same in every view (only the CLIP noise vectors and the look-alike swaps of
``similar_confusion``, view-dependent by definition, still differ per view).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

GENERATOR_VERSION = "2"  # 2: CLIP-like image/text cosine (image_text_cos)


@dataclass(frozen=True)
class NoiseKnobs:
    over_seg: float = 0.15          # P(an object's level-3 ("l") mask is split into its parts / halves)
    under_seg: float = 0.10         # P(two objects touching in the image share one level-3 mask)
    miss: float = 0.05              # P(a mask is dropped: its pixels become -1), per mask and level
    boundary_jitter: int = 1        # max pixels of dilation (+) / erosion (-) of each mask's edge
    clip_noise: float = 0.6         # norm of the Gaussian noise added to a unit "CLIP" vector before
                                    # renormalising (per-component std clip_noise / sqrt(512))
    clip_confusion: float = 0.05    # P(a mask gets a neighbour's vector or the generic "object" one)
    part_weight: float = 0.6        # weight of the part word in a part mask's vector (name + w * part)
    image_text_cos: float = 0.3     # CLIP's modality gap: a mask vector is unit(c * text-side vector +
                                    # sqrt(1-c^2) * a fixed "image" direction), so a matching image-text
                                    # pair has cosine ~c (~0.3 for OpenCLIP ViT-B-16), as in real CLIP;
                                    # 1.0 = vectors in text space (relevancy then saturates)
    background_masks: float = 0.7   # P(a background region (table, floor, wall, sky) gets a mask)
    background_misleading: float = 0.10  # P(a background mask gets an object's vector, not a generic one)
    per_view: bool = True           # draw the segmentation decisions independently in every view
    # Failure modes of real per-mask CLIP features (masks.py / layout.py apply them; each 0 = off,
    # and left out of the scene identity while off, so scenes made before keep theirs):
    crop_context: float = 0.0       # LangSplat: CLIP sees the mask's bounding-box crop; a vector leaks
                                    # towards what else the box covers: unit((1 - a*f_out)*own +
                                    # a * sum_k c_k * vec_k), c_k = share of the box showing k outside the mask
    part_name_drop: float = 0.0     # LangSplat / OpenGaussian: small part masks describe the part, not the
                                    # object: a named part's vector is unit((1 - d)*name + part_weight*part)
    similar_confusion: float = 0.0  # LERF / COS3D: P(per mask and view) that an object's mask gets the
                                    # vector of a look-alike scene object (same colour key, or same main
                                    # primitive at about the same size: masks.look_alikes)
    shared_names: float = 0.0       # LERF-OVS: P(each further object's name shares a word with an earlier
                                    # one: "red apple" / "green apple"); 0 = the vocabulary's usual mix
    shared_word_mix: float = 0.0    # CLIP binds attributes weakly: an object's name vector is pulled
                                    # towards the words its name shares with other scene objects
    surface_drift: float = 0.0      # LERF / COS3D: large surfaces (table, floor, wall) drift towards
                                    # generic phrases: unit((1 - s)*region + s*unit(unit(mean name) + "object"))

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("boundary_jitter",):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"noise knob {f.name} must be an integer >= 0, got {v!r}")
            elif f.name == "per_view":
                if not isinstance(v, bool):
                    raise ValueError(f"noise knob per_view must be true/false, got {v!r}")
            elif f.name == "image_text_cos":
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0.0 < v <= 1.0):
                    raise ValueError(f"noise knob image_text_cos must be in (0, 1], got {v!r}")
            elif f.name in ("clip_noise", "part_weight"):
                if not isinstance(v, (int, float)) or not (0 <= v <= 100):
                    raise ValueError(f"noise knob {f.name} must be a number in [0, 100], got {v!r}")
            elif not isinstance(v, (int, float)) or isinstance(v, bool) or not (0.0 <= v <= 1.0):
                raise ValueError(f"noise knob {f.name} is a probability in [0, 1], got {v!r}")
        if self.part_name_drop == 1.0 and self.part_weight == 0:
            raise ValueError("noise knob part_name_drop=1 with part_weight=0 leaves part masks without "
                             "any semantics; lower part_name_drop or raise part_weight")


@dataclass(frozen=True)
class SceneConfig:
    n_views: int = 48               # images on the orbit (frame_00001 .. frame_<n_views>)
    width: int = 192                # image width in pixels
    height: int = 144               # image height in pixels
    supersample: int = 2            # s x s colour samples per pixel (ids/depth from the pixel centre)
    n_objects: int = 10             # named objects on the table (>= 8 for LERF-like scenes)
    layout_radius: float = 0.7      # objects are placed inside this disc (world units)
    touch_prob: float = 0.35        # P(an object is placed touching an already placed one)
    fov_deg: float = 55.0           # horizontal field of view
    distance: float = 2.0           # mean camera distance to the table centre
    elev_min_deg: float = 18.0      # camera elevation range over the orbit (degrees)
    elev_max_deg: float = 58.0
    shadows: bool = True            # cast shadows (shadow rays towards the light)
    n_points: int = 8000            # COLMAP points sampled on visible surfaces (single-view ones dropped)
    point_noise: float = 0.002      # std of the position noise of COLMAP points (world units)
    outlier_frac: float = 0.03      # fraction of COLMAP points displaced far from any surface
    n_labelled: int = 5             # labelled frames (label JSON + gt masks), spread over the orbit
    label_min_frac: float = 0.002   # an object is labelled in a frame if it covers >= this image fraction
    min_mask_frac: float = 0.0006   # "SAM" masks smaller than this image fraction are dropped
    text_dim: int = 512             # width of the "CLIP" space (512: OpenCLIP ViT-B-16; 768: SigLIP B/16)
    noise: NoiseKnobs = field(default_factory=NoiseKnobs)

    def validate(self) -> None:
        ints = {"n_views": 1, "width": 8, "height": 8, "supersample": 1, "n_objects": 1,
                "n_points": 0, "n_labelled": 1, "text_dim": 16}
        for k, lo in ints.items():
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{k} must be an integer >= {lo}, got {v!r}")
        pos = ("layout_radius", "fov_deg", "distance")
        for k in pos:
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{k} must be a positive number, got {v!r}")
        for k in ("touch_prob", "outlier_frac", "label_min_frac", "min_mask_frac"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not (0 <= v <= 1):
                raise ValueError(f"{k} must be in [0, 1], got {v!r}")
        if not (0 <= self.point_noise < 1):
            raise ValueError(f"point_noise must be in [0, 1), got {self.point_noise!r}")
        if not (-10 <= self.elev_min_deg <= self.elev_max_deg <= 85):
            raise ValueError(f"need -10 <= elev_min_deg <= elev_max_deg <= 85, got "
                             f"{self.elev_min_deg}, {self.elev_max_deg}")
        if self.fov_deg >= 170:
            raise ValueError(f"fov_deg must be < 170, got {self.fov_deg}")
        from .layout import vocabulary_size
        if self.n_objects > vocabulary_size():
            raise ValueError(f"n_objects={self.n_objects} exceeds the object vocabulary size {vocabulary_size()}")
        if self.n_labelled > self.n_views:
            raise ValueError(f"n_labelled={self.n_labelled} exceeds n_views={self.n_views}")
        if self.supersample > 8:
            raise ValueError(f"supersample must be <= 8, got {self.supersample}")
        self.noise.validate()

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["text_dim"] == 512:   # added later: left out at its default, so earlier scenes keep their identity
            del d["text_dim"]
        for k in LATER_NOISE_KNOBS:  # the same for the later noise knobs while they are off
            if d["noise"][k] == 0:
                del d["noise"][k]
        return d


# noise knobs added after generator version 2 (off = 0): recorded in the identity only when on
LATER_NOISE_KNOBS = ("crop_context", "part_name_drop", "similar_confusion", "shared_names",
                     "shared_word_mix", "surface_drift")


_CLEAN = NoiseKnobs(over_seg=0.0, under_seg=0.0, miss=0.0, boundary_jitter=0, clip_noise=0.0,
                    clip_confusion=0.0, background_masks=1.0, background_misleading=0.0)
# hard: the failure-mode knobs at plausible, untuned strengths (a third of the crop's context, half
# the name on parts, one mask in ten confused with a look-alike, half the names sharing a word)
_HARD = NoiseKnobs(over_seg=0.35, under_seg=0.30, miss=0.15, boundary_jitter=2, clip_noise=1.0,
                   clip_confusion=0.15, background_masks=0.9, background_misleading=0.30,
                   crop_context=0.3, part_name_drop=0.5, similar_confusion=0.1, shared_names=0.5,
                   shared_word_mix=0.3, surface_drift=0.3)

PRESETS: dict[str, SceneConfig] = {
    "clean": SceneConfig(noise=_CLEAN, point_noise=0.0, outlier_frac=0.0),
    "default": SceneConfig(),
    "hard": SceneConfig(noise=_HARD, point_noise=0.004, outlier_frac=0.06),
    # GPU benchmark size (LERF-OVS images are ~988x731); never generated in tests
    "large": SceneConfig(n_views=200, width=988, height=731, n_points=20000, n_labelled=6),
}


def make_config(preset: str = "default", overrides: dict | None = None) -> SceneConfig:
    """The preset's config with ``overrides`` applied: keys are SceneConfig fields or
    ``noise.<knob>`` (or bare noise knob names). Unknown keys/presets -> ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    scene_keys = {f.name for f in fields(SceneConfig)} - {"noise"}
    noise_keys = {f.name for f in fields(NoiseKnobs)}
    s_upd, n_upd = {}, {}
    for k, v in (overrides or {}).items():
        kk = k[len("noise."):] if k.startswith("noise.") else k
        if k in scene_keys:
            s_upd[k] = v
        elif kk in noise_keys:
            n_upd[kk] = v
        else:
            raise ValueError(f"unknown synthetic-scene setting {k!r}; known: {sorted(scene_keys)} "
                             f"and noise.{{{', '.join(sorted(noise_keys))}}}")
    def _typed(default, v):  # 2 -> 2.0 for float knobs, so the scene identity is stable
        return float(v) if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool) else v

    s_upd = {k: _typed(getattr(cfg, k), v) for k, v in s_upd.items()}
    n_upd = {k: _typed(getattr(cfg.noise, k), v) for k, v in n_upd.items()}
    cfg = replace(cfg, noise=replace(cfg.noise, **n_upd), **s_upd)
    cfg.validate()
    return cfg
