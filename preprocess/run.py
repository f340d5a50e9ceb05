"""LangSplat preprocessing: SAM multi-level masks + OpenCLIP per-mask features for one scene
(or SAM 2 masks, ``--masks sam2``, and SigLIP features, ``--language siglip``: preprocess/models.py).

    python -m preprocess.run -s <scene> [--ckpt_dir ckpts] [--device auto] [--points_per_batch 64] ...

Reads ``<scene>/images/*`` (image files sorted by name) and writes, per image,
``<scene>/language_features/<stem>_s.npy`` float32 [4, H, W] (mask ids per level default/s/m/l,
global row indices into ``_f``; -1 = no mask) and ``<stem>_f.npy`` float32 [M, 512] (unit rows),
plus ``manifest.json`` (models, weight sha256s, thresholds, package versions, ``complete``).
``<stem>`` is the file name cut at its first dot. Method: docs/method.md §6; files: docs/formats.md §3-4.

Per image: read with cv2 (BGR -> RGB); if it is over 1080 px high, resize to 1080 high (or to
``--resolution`` px wide); SAM ``generate_levels`` (sam_levels.py) -> per-level mask NMS
(mask_filter.py) -> one CLIP crop per kept mask (clip_features.py) -> the two files. An image with
no mask at all gets all -1 maps and a [0, 512] ``_f``.

Resumable: each file is written to a hidden temp name and renamed, so a killed run leaves only
whole pairs; a re-run skips images whose pair exists. A run with other settings than the
existing manifest's (models, weights, thresholds, resolution, precision) stops unless
``--overwrite`` is given. Bad input (no images/, unreadable image, missing weights) -> one-line
error, exit code 2, nothing partial written.

Cost with ViT-H (from the code path): per image 5 crops (full image + 2x2) -> 5 ViT-H image
encodings at 1024x1024 and 5 x 1024 point prompts (16 decoder batches of 64 per crop, 3 masks
each, logits at crop resolution), then 4 levels of NMS and ~100-400 CLIP ViT-B-16 crops. LangSplat
users report ~20 s/image for SAM on a V100/A100-class GPU (their extra 2-9 min came from the
O(N^2) Python mask NMS, vectorised here). Peak GPU memory is dominated by the logits
(points_per_batch x 3 x H x W float32, ~1.2 GB at 1440x1080 with 64); lower --points_per_batch
to save memory, the output does not change.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import torch

from arguments.cli import run_cli
from scene.atomic import write_text
from scene.views import LANGSPLAT_MAX_HEIGHT, target_size_langsplat
from scene.language_features import LEVELS, id_maps, save_features

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SEED = 42          # LangSplat seed_everything(42)


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
def list_images(scene: Path, images: str = "images") -> list[Path]:
    """Image files of ``<scene>/<images>`` sorted by name; checks stems are unique and headers readable."""
    from PIL import Image

    d = scene / images
    if not scene.is_dir():
        raise FileNotFoundError(f"scene folder not found: {scene}")
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no '{images}/' folder in the scene (expected the input images there)")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"{d}: no image files ({', '.join(IMAGE_EXTS)})")
    seen: dict[str, Path] = {}
    for p in files:
        stem = p.name.split(".")[0]
        if stem in seen:
            raise ValueError(f"{p} and {seen[stem]} have the same image name {stem!r} (cut at the first dot)")
        seen[stem] = p
    for p in files:  # decoded once up front (JPEGs at 1/8 scale), so a truncated file fails before any output
        try:
            with Image.open(p) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
        except Exception as e:
            msg = " ".join(str(e).split())[:200]
            raise ValueError(f"{p}: cannot read image, the file is truncated or corrupt ({type(e).__name__}: "
                             f"{msg}): replace it, or move it out of {d}") from None
    return files


def stream_images(paths: list[Path], resolution: int = -1, workers: int = 2):
    """``(path, RGB uint8)`` in order, the next ``workers`` images read by threads while the caller
    works on the current one (cv2 decodes without the GIL); ``workers`` 0: read one by one."""
    if workers <= 0:
        for p in paths:
            yield p, read_image(p, resolution)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for p in paths:
            pending.append((p, pool.submit(read_image, p, resolution)))
            if len(pending) > workers:
                q, f = pending.popleft()
                yield q, f.result()
        while pending:
            q, f = pending.popleft()
            yield q, f.result()


def read_image(path: Path, resolution: int = -1) -> np.ndarray:
    """RGB uint8 [H, W, 3] as LangSplat reads it (cv2.imread, BGR->RGB, resized by
    ``scene.views.target_size_langsplat``)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode image (corrupt or unsupported)")
    h, w = bgr.shape[:2]
    size = target_size_langsplat(w, h, resolution)
    if size != (w, h):
        bgr = cv2.resize(bgr, size)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------
# one image -> the two arrays
# ---------------------------------------------------------------------------------------------
def build_seg_maps(levels: dict[str, list[dict]], h: int, w: int) -> tuple[np.ndarray, list[int]]:
    """SAM records per level -> float32 [4, H, W] global ids and the per-level counts
    (``scene.language_features.id_maps``: painted in list order, ids offset level by level)."""
    return id_maps([[r["segmentation"] for r in levels.get(lv, [])] for lv in LEVELS], h, w)


def process_image(rgb: np.ndarray, generator, encoder, nms: dict, device=None):
    """RGB uint8 [H, W, 3] -> (_s float32 [4, H, W], _f float32 [M, D], per-level counts)."""
    from .clip_features import level_crops
    from .mask_filter import masks_update

    levels = masks_update(generator.generate_levels(rgb), device=device, **nms)
    seg, counts = build_seg_maps(levels, *rgb.shape[:2])
    crops = np.concatenate([level_crops(rgb, levels[lv]) for lv in LEVELS])
    feats = encoder.encode(crops).numpy().astype(np.float32)
    return seg, feats, counts


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------
def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "segment-anything", "sam2", "open-clip-torch", "transformers", "numpy",
                "opencv-python-headless"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def check_resume(out_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuses to mix outputs of different settings (or of an unknown producer) unless ``overwrite``."""
    if overwrite or not out_dir.is_dir():
        return
    man = out_dir / "manifest.json"
    if man.is_file():
        try:
            old = json.loads(man.read_text()).get("settings")
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{man}: cannot read ({e}); pass --overwrite to redo the scene") from None
        if old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k))
            raise ValueError(f"{out_dir} was made with other settings ({', '.join(diff)} differ, see {man}); "
                             f"pass --overwrite to redo it, or write elsewhere with --output")
    elif any(out_dir.glob("*_[sf].npy")):
        raise ValueError(f"{out_dir} holds feature files not written by preprocess.run (no manifest.json); "
                         f"move them away or pass --overwrite")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .mask_filter import LANGSPLAT_NMS
    from .models import MASK_MODELS
    from .sam2_levels import DEFAULT_SAM2, SAM2_CHECKPOINTS, sam2_models
    from .sam_levels import LANGSPLAT_AMG
    from scene.foundation import LANGUAGE_MODELS, sam_model_types

    p = argparse.ArgumentParser(prog="python -m preprocess.run",
                                description="SAM / SAM 2 4-level masks + OpenCLIP / SigLIP per-mask features "
                                            "(LangSplat format).")
    p.add_argument("-s", "--source_path", required=True, help="scene folder with images/")
    p.add_argument("--images", default="images", help="image folder inside the scene")
    p.add_argument("--output", default="language_features", help="output folder inside the scene")
    p.add_argument("--ckpt_dir", default=None, help="weights folder (default $CKPT_DIR or <repo>/ckpts)")
    p.add_argument("--masks", default="sam", choices=MASK_MODELS,
                   help="mask generator: sam (segment-anything, LangSplat's) | sam2 (the sam2 package's SAM 2.1); "
                        "both give LangSplat's 4 levels (docs/method.md §6.2)")
    p.add_argument("--sam_model", default="vit_h", choices=sam_model_types(), help="--masks sam: the SAM model")
    p.add_argument("--sam2_model", default=DEFAULT_SAM2, choices=sam2_models(),
                   help=f"--masks sam2: the SAM 2.1 model ({', '.join(SAM2_CHECKPOINTS)}; default {DEFAULT_SAM2}, "
                        f"as COS3D's language_features_SAM2_local_large)")
    p.add_argument("--sam_checkpoint", default=None,
                   help="SAM / SAM 2 weights file (default: the official file name in ckpt_dir)")
    p.add_argument("--language", default="openclip", choices=tuple(LANGUAGE_MODELS),
                   help="language model: openclip (LangSplat's OpenCLIP ViT-B-16, 512-D) | siglip "
                        "(ViT-B-16-SigLIP, 768-D, weights + tokenizer in ckpt_dir/ViT-B-16-SigLIP/); the query "
                        "uses its text tower (recorded in manifest.json)")
    p.add_argument("--clip_model", default=None, help="open_clip model config name (default: --language's)")
    p.add_argument("--clip_weights", default=None,
                   help="open_clip weights file (default: open_clip_model.safetensors or "
                        "open_clip_pytorch_model.bin in ckpt_dir, or in ckpt_dir/<model>/ for other models)")
    p.add_argument("--resolution", type=int, default=-1, help="-1: downscale to 1080 px high if higher; "
                                                               "R > 0: resize to R px WIDE (LangSplat)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:i]")
    p.add_argument("--precision", default="auto", choices=("auto", "fp16", "fp32"),
                   help="CLIP precision (auto: fp16 on CUDA as LangSplat, fp32 on CPU)")
    p.add_argument("--clip_batch", type=int, default=128, help="crops per CLIP forward pass")
    p.add_argument("--workers", type=int, default=2,
                   help="threads reading (and decoding) the next images while the models run (default 2; "
                        "0 = read in the main thread); the output does not change")
    for k, v in LANGSPLAT_AMG.items():
        p.add_argument(f"--{k}", type=type(v), default=v, help=f"SAM generator (LangSplat: {v})")
    for k, v in LANGSPLAT_NMS.items():
        p.add_argument(f"--nms_{k}", type=float, default=v, help=f"per-level mask NMS (LangSplat: {v})")
    p.add_argument("--overwrite", action="store_true", help="recompute every image, ignoring existing files")
    return p


def run(args) -> dict:
    """Runs the preprocessing described by parsed ``args``; returns a summary dict."""
    from tqdm import tqdm

    from scene.foundation import (checkpoint_dir, find_openclip_weights, image_mean_std, pick_device,
                                  resolve_precision, sha256_file)

    from .mask_filter import LANGSPLAT_NMS
    from .models import build_image_encoder, build_mask_generator, find_mask_weights, language_model_name
    from .sam_levels import LANGSPLAT_AMG

    scene = Path(args.source_path)
    files = list_images(scene, args.images)
    if args.ckpt_dir is not None:
        checkpoint_dir(args.ckpt_dir)  # a file: say so, not "weights not found in it"
    mask_key, mask_settings, mask_w = find_mask_weights(args.masks, args)
    clip_model = language_model_name(args.language, args.clip_model)
    clip_w = find_openclip_weights(args.ckpt_dir, args.clip_weights, model=clip_model)
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    for k in ("points_per_batch", "clip_batch", "points_per_side"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k} must be >= 1, got {getattr(args, k)}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    amg = {k: getattr(args, k) for k in LANGSPLAT_AMG}
    nms = {k: getattr(args, f"nms_{k}") for k in LANGSPLAT_NMS}
    settings = {
        mask_key: mask_settings,
        "clip": {"model": clip_model, "file": clip_w.name, "sha256": sha256_file(clip_w),
                 "precision": precision},
        "generator": {k: v for k, v in amg.items() if k != "points_per_batch"},
        "mask_nms": nms, "resolution": args.resolution, "images": args.images, "seed": SEED,
    }
    out_dir = scene / args.output
    check_resume(out_dir, settings, args.overwrite)

    def done(p: Path) -> bool:
        stem = p.name.split(".")[0]
        return all((out_dir / f"{stem}{s}.npy").is_file() for s in ("_s", "_f"))

    todo = files if args.overwrite else [p for p in files if not done(p)]
    if not todo and (out_dir / "manifest.json").is_file():  # nothing to do: no model is loaded
        old = json.loads((out_dir / "manifest.json").read_text())
        if not old.get("complete"):  # killed between the last rename and the final manifest write
            _write_json(out_dir / "manifest.json", {**old, "complete": True})
        print(f"[preprocess] all {len(files)} images already done in {out_dir}")
        return {"processed": 0, "skipped": len(files), "seconds": 0.0, "out_dir": out_dir}
    if len(todo) < len(files):
        print(f"[preprocess] {len(files) - len(todo)} of {len(files)} images already done in {out_dir}")

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.backends.cudnn.deterministic = True  # LangSplat seed_everything
    generator = build_mask_generator(args.masks, args, mask_w, device, amg)
    encoder = build_image_encoder(clip_model, clip_w, device, precision, args.clip_batch)

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp*"):  # leftovers of a killed run (never renamed, so never valid)
        stale.unlink(missing_ok=True)
    manifest = {"tool": "python -m preprocess.run", "settings": settings,
                "format": {"_s.npy": "float32 [4, H, W] ids (default, s, m, l), -1 = no mask",
                           "_f.npy": f"float32 [M, {encoder.dim}] L2-normalised {clip_model} image embeddings"},
                "runtime": {"device": str(device), "points_per_batch": args.points_per_batch,
                            "clip_batch": args.clip_batch, "workers": args.workers,
                            "image_mean_std": [list(v) for v in image_mean_std(clip_model)],
                            "versions": _versions()},
                "images": len(files), "complete": False}
    _write_json(out_dir / "manifest.json", manifest)
    t0, noted, total_masks = time.time(), False, 0
    bar = tqdm(total=len(todo), desc=f"{args.masks.upper()}+{args.language}", unit="img", disable=not todo)
    for path, rgb in stream_images(todo, args.resolution, args.workers):
        if not noted and args.resolution == -1 and rgb.shape[0] == LANGSPLAT_MAX_HEIGHT:
            print(f"[preprocess] images over {LANGSPLAT_MAX_HEIGHT} px high are resized to "
                  f"{LANGSPLAT_MAX_HEIGHT} px high (pass --resolution <width> to choose)")
            noted = True
        seg, feats, counts = process_image(rgb, generator, encoder, nms, device)
        save_features(out_dir, path.name.split(".")[0], seg, feats)
        total_masks += sum(counts)
        bar.update(1)
        bar.set_postfix(masks="/".join(map(str, counts)))
    bar.close()
    sec = time.time() - t0
    manifest.update(complete=True, seconds=round(sec, 2), processed=len(todo),
                    seconds_per_image=round(sec / max(len(todo), 1), 3))
    _write_json(out_dir / "manifest.json", manifest)
    print(f"[preprocess] {len(todo)} images in {sec:.1f} s ({sec / max(len(todo), 1):.2f} s/image, "
          f"{total_masks} masks) -> {out_dir}")
    return {"processed": len(todo), "skipped": len(files) - len(todo), "seconds": sec, "out_dir": out_dir}


def _run_status(args) -> int:
    run(args)
    return 0


def main(argv=None) -> int:
    """Bad input (WeightsError is a ValueError) -> one ``error:`` line, exit 2 (``arguments.cli.run_cli``)."""
    return run_cli(_run_status, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
