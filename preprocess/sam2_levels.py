"""SAM 2 (``sam2`` 1.1.0, the SAM 2.1 checkpoints) as a second mask generator for LangSplat's four
levels (default, s, m, l), through the very same :class:`~preprocess.sam_levels.LevelMaskGenerator`.

:class:`Sam2PointPredictor` gives a ``SAM2ImagePredictor`` the ``SamPredictor`` subset that
``LevelMaskGenerator`` talks to; :func:`build_sam2_generator` wraps it with
``LevelMaskGenerator.around``. So the level rule and the filter chain are SAM's, unchanged:

* per batch of point prompts one decoder call with ``multimask_output=True``: logits
  ``[B, 3, h_crop, w_crop]``, IoU predictions ``[B, 3]``;
* level ``default`` = the three outputs of every point, point-major; ``s`` / ``m`` / ``l`` = output
  0 / 1 / 2 alone; each level then runs pred-IoU, stability, crop-edge, within-crop NMS, cross-crop
  NMS and the small-region cleanup on its own (LangSplat's AMG settings ``LANGSPLAT_AMG``).

Differences from SAM (sam2 1.1.0 source):

* the three multimask outputs are SAM 2's mask tokens 1..3, as SAM's are (token 0 is the single-mask
  output, unused here). That they run small -> large (subpart, part, whole), which LangSplat's s/m/l
  relies on, is a learned habit in both models, not enforced by either; for the SAM 2.1 weights it is
  UNVERIFIED here (no real weights in the tests);
* ``build_sam2(apply_postprocessing=True)`` (its default, kept) only turns on the decoder's *dynamic
  multimask fallback*, which swaps the single-mask output for the best multimask one when unstable.
  It runs only when ``multimask_output=False``, so it cannot change these levels (a test checks);
  we keep it so the model is exactly what ``build_sam2`` gives everybody else. The predictor's own
  hole filling / sprinkle removal (``max_hole_area``, ``max_sprinkle_area``) stays off (0, also the
  default of SAM 2's AMG): the small-region cleanup of the chain does that job, as for SAM;
* the input is resized to a square ``image_size`` (1024) with ImageNet mean / std (SAM: longest
  side 1024, padded); the 256x256 logits are resized straight to the crop size;
* IoU predictions go through a sigmoid (``iou_prediction_use_sigmoid`` in the 2.1 configs), so they
  lie in [0, 1] (SAM's are unbounded); the image predictor ignores the object-score head;
* the image embedding runs in the weights' dtype (fp32); SAM 2's notebooks wrap calls in a bfloat16
  autocast on CUDA, which a caller may do around ``generate_levels``.

Weights are local files only (``SAM2_CHECKPOINTS``, ckpts/README.md); nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

from preprocess.sam_levels import LANGSPLAT_AMG, LevelMaskGenerator
from scene.foundation import WeightsError, _missing, checkpoint_dir, offline_hub, pick_device, unreadable_weights

SAM2_PAGE = "https://github.com/facebookresearch/sam2#model-description"
SAM2_HF = "https://huggingface.co/facebook/"


@dataclass(frozen=True)
class Sam2Checkpoint:
    config: str        # hydra config inside the sam2 package
    file: str          # weights file name inside the checkpoint folder
    size_mb: int       # download size in MiB (third-party tables, UNVERIFIED)
    params_m: float    # parameters in millions (SAM 2 README)
    hf_repo: str       # Hugging Face repo holding the same file

    @property
    def source(self) -> str:
        return f"{SAM2_HF}{self.hf_repo} or {SAM2_PAGE}"


# the SAM 2.1 release (sam2 README "SAM 2.1 checkpoints"; build_sam.HF_MODEL_ID_TO_FILENAMES)
SAM2_CHECKPOINTS: dict[str, Sam2Checkpoint] = {
    "sam2.1_hiera_t": Sam2Checkpoint("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", 149, 38.9,
                                     "sam2.1-hiera-tiny"),
    "sam2.1_hiera_s": Sam2Checkpoint("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", 176, 46.0,
                                     "sam2.1-hiera-small"),
    "sam2.1_hiera_b+": Sam2Checkpoint("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", 309,
                                      80.8, "sam2.1-hiera-base-plus"),
    "sam2.1_hiera_l": Sam2Checkpoint("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", 857, 224.4,
                                     "sam2.1-hiera-large"),
}
DEFAULT_SAM2 = "sam2.1_hiera_l"

# extra architectures: model name -> (hydra config, hydra overrides); tests register tiny ones
SAM2_ARCHS: dict[str, tuple[str, list[str]]] = {}


def sam2_models() -> list[str]:
    return sorted(set(SAM2_CHECKPOINTS) | set(SAM2_ARCHS))


def _arch(model: str) -> tuple[str, list[str]]:
    if model in SAM2_ARCHS:
        return SAM2_ARCHS[model]
    if model in SAM2_CHECKPOINTS:
        return SAM2_CHECKPOINTS[model].config, []
    raise ValueError(f"unknown SAM 2 model {model!r}; choose one of {sam2_models()}")


def _source(model: str) -> str:
    info = SAM2_CHECKPOINTS.get(model)
    return info.source if info else SAM2_PAGE


def find_sam2_checkpoint(model: str, ckpt_dir=None, path: Union[str, Path, None] = None) -> Path:
    """The SAM 2 checkpoint file: ``path`` if given, else ``<ckpt_dir>/<official name>``."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise _missing(p, f"SAM 2 {model}", _source(model))
        return p
    info = SAM2_CHECKPOINTS.get(model)
    if info is None:
        raise FileNotFoundError(f"SAM 2 model {model!r} has no default checkpoint file "
                                f"(known: {sorted(SAM2_CHECKPOINTS)}); name the file")
    p = checkpoint_dir(ckpt_dir) / info.file
    if not p.is_file():
        raise _missing(p, f"SAM 2 {model}", info.source)
    return p


def load_sam2(model: str, checkpoint: Union[str, Path], device) -> torch.nn.Module:
    """Builds SAM 2 ``model`` (``build_sam2``, no weights) and loads the local file ``checkpoint``
    (``{"model": state_dict}``, as Meta ships them) strictly: a ``SAM2Base`` in eval mode on ``device``
    (``"auto"``: CUDA when available)."""
    config, overrides = _arch(model)
    device = pick_device(device)
    where = _source(model)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise _missing(checkpoint, f"SAM 2 {model}", where)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors; never torch's "retry with weights_only=False" advice
        raise WeightsError(f"{checkpoint}: cannot read as a SAM 2 {model} checkpoint, "
                           f"{unreadable_weights(e)}; re-download it from {where}") from None
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict)):
        what = "a state_dict without the 'model' entry (a SAM 1 file?)" if isinstance(state, dict) \
            else f"a {type(state).__name__}"
        raise WeightsError(f"{checkpoint}: not a SAM 2 checkpoint, it holds {what}; "
                           f"expected the {model} file from {where}")
    offline_hub()
    from sam2.build_sam import build_sam2  # the preprocess extra; imports hydra and registers its configs

    net = build_sam2(config, None, device="cpu", mode="eval", hydra_overrides_extra=list(overrides))
    try:
        net.load_state_dict(state["model"], strict=True)
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise WeightsError(f"{checkpoint}: does not load into SAM 2 {model} ({first} ...); it is not the "
                           f"{model} checkpoint (get it from {where})") from None
    return net.to(device).eval()


@dataclass(frozen=True)
class _ModelFacts:
    """What ``LevelMaskGenerator`` reads from ``predictor.model``."""
    mask_threshold: float
    net: torch.nn.Module


class Sam2PointPredictor:
    """A ``SAM2ImagePredictor`` behind the ``SamPredictor`` calls ``LevelMaskGenerator`` makes."""

    def __init__(self, net: torch.nn.Module, mask_threshold: float = 0.0):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.sam2 = SAM2ImagePredictor(net, mask_threshold=mask_threshold)  # no hole / sprinkle filling
        # the predictor hard-codes the 1024-px feature sizes (256, 128, 64); derive them from the model:
        # the backbone's stride-16 embedding and the two high-res levels at strides 4 and 8
        e = net.image_size // net.backbone_stride
        self.sam2._bb_feat_sizes = [(4 * e, 4 * e), (2 * e, 2 * e), (e, e)]
        self.model = _ModelFacts(mask_threshold, net)
        self.transform = self  # ``transform.apply_coords`` below

    @property
    def device(self) -> torch.device:
        return self.sam2.device

    def set_image(self, image: np.ndarray) -> None:
        self.sam2.set_image(image)

    def reset_image(self) -> None:
        self.sam2.reset_predictor()

    def apply_coords(self, points: np.ndarray, size) -> np.ndarray:
        """Crop pixels (x, y) of an image of ``size`` (h, w) -> the model's input frame."""
        pts = torch.as_tensor(points, dtype=torch.float32)
        return self.sam2._transforms.transform_coords(pts, normalize=True, orig_hw=tuple(size)).numpy()

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                      multimask_output: bool = True, return_logits: bool = False):
        """Prompts in the input frame -> (masks [B, C, h, w] at the set image's size, iou [B, C], low-res logits)."""
        return self.sam2._predict(point_coords.float(), point_labels, boxes, mask_input,
                                  multimask_output, return_logits=return_logits)


def build_sam2_generator(model: str, checkpoint: Union[str, Path], device, **amg) -> LevelMaskGenerator:
    """A ``LevelMaskGenerator`` on SAM 2 ``model`` from the local ``checkpoint``: ``generate_levels(rgb
    uint8 [H, W, 3]) -> {"default", "s", "m", "l": [records]}``; ``amg`` overrides ``LANGSPLAT_AMG``."""
    net = load_sam2(model, checkpoint, device)
    return LevelMaskGenerator.around(Sam2PointPredictor(net), **{**LANGSPLAT_AMG, **amg})
