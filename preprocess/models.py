"""The preprocessing's models, chosen by name: mask generators (``--masks``) and language models
(``--language``), each resolved to its local weights file and the manifest entry that records it.

* masks: ``sam`` (segment-anything ViT-H / L / B, ``preprocess/sam_levels.py``) and ``sam2`` (the
  PyPI ``sam2`` package's SAM 2.1 models, ``preprocess/sam2_levels.py``), both through the same
  4-level rule (docs/method.md §6.2). Each gives an object with ``generate_levels(rgb) ->
  {"default", "s", "m", "l": [records]}``.
* language: ``openclip`` (LangSplat's OpenCLIP ViT-B-16) and ``siglip`` (open_clip's
  ``ViT-B-16-SigLIP``, 768-D), ``scene.foundation.LANGUAGE_MODELS``: the image tower here, the text
  tower at query time (``scene/encoders.py``), matched through the manifest's ``settings.clip``
  (``scene/provenance.py``: a scene made with one model is never queried with another's text tower).

The manifest keeps LangSplat's layout: ``settings.sam`` for SAM (as before), ``settings.sam2`` for
SAM 2, ``settings.clip`` = {model, file, sha256, precision} for either language model.
"""
from __future__ import annotations

from pathlib import Path

MASK_MODELS = ("sam", "sam2")


def language_model_name(language: str, clip_model: str | None) -> str:
    """The open_clip config of ``--language`` (``--clip_model`` overrides it)."""
    from scene.foundation import LANGUAGE_MODELS

    if language not in LANGUAGE_MODELS:
        raise ValueError(f"--language {language!r}: choose one of {', '.join(LANGUAGE_MODELS)}")
    return clip_model or LANGUAGE_MODELS[language].model


def find_mask_weights(masks: str, args) -> tuple[str, dict, Path]:
    """(settings key, settings entry, weights file) of the mask generator ``masks``; the file is found
    (or its absence reported with its source) before any model is built."""
    from scene.foundation import find_sam_checkpoint, sha256_file

    if masks == "sam":
        path = find_sam_checkpoint(args.sam_model, args.ckpt_dir, args.sam_checkpoint)
        return "sam", {"model_type": args.sam_model, "file": path.name, "sha256": sha256_file(path)}, path
    if masks == "sam2":
        from .sam2_levels import find_sam2_checkpoint

        path = find_sam2_checkpoint(args.sam2_model, args.ckpt_dir, args.sam_checkpoint)
        return "sam2", {"model": args.sam2_model, "file": path.name, "sha256": sha256_file(path)}, path
    raise ValueError(f"--masks {masks!r}: choose one of {', '.join(MASK_MODELS)}")


def build_mask_generator(masks: str, args, weights: Path, device, amg: dict):
    """The generator of ``masks`` with LangSplat's generator settings ``amg``."""
    if masks == "sam":
        from scene.foundation import load_sam

        from .sam_levels import LevelMaskGenerator

        return LevelMaskGenerator(load_sam(args.sam_model, weights, device), **amg)
    from .sam2_levels import build_sam2_generator

    return build_sam2_generator(args.sam2_model, weights, device, **amg)


def build_image_encoder(model_name: str, weights: Path, device, precision: str, batch_size: int):
    """The image tower of open_clip ``model_name`` with its own normalisation."""
    from scene.foundation import image_mean_std, load_openclip

    from .clip_features import OpenCLIPImageEncoder

    return OpenCLIPImageEncoder(load_openclip(model_name, weights, device, precision), batch_size,
                                mean_std=image_mean_std(model_name))
