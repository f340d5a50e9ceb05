"""Preprocessing throughput per model: images/s and where the time goes (mask model, mask filter,
crops + language model), with the tests' tiny random-weight models at a fixed image size.

    python -m benchmarks.preprocess [--images 4] [--size 128 96] [--threads 1]

Models: SAM (segment-anything parts, image size 128) and SAM 2.1 (Hiera, image size 128), each with
the tiny OpenCLIP ViT and the tiny SigLIP-style tower of tests/test_preprocess.py and
tests/test_language_models.py. Random weights give no mask at LangSplat's thresholds, so the
generator runs LangSplat's points, crops and NMS with the score thresholds off (every candidate
mask goes through the filter chain and gets a crop): the figures are the work of a real image with
many masks, not the quality of any. Real-size figures need real weights on a GPU (not measured here).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]   # the tiny model builders live with the tests


def tiny_models(tmp: Path) -> dict:
    """Weights files of the tiny models -> {name: (kind, path)}; registers their architectures."""
    import json

    import open_clip
    import torch

    import test_language_models as tl
    import test_preprocess as tp
    import test_sam2_levels as ts
    from preprocess import sam2_levels
    from sam2.build_sam import build_sam2
    from scene import foundation

    torch.manual_seed(0)
    foundation.SAM_BUILDERS["tiny"] = tp.build_tiny_sam
    sam2_levels.SAM2_ARCHS[ts.TINY] = ts.TINY_ARCH
    torch.save(tp.build_tiny_sam().state_dict(), tmp / "sam_tiny.pth")
    torch.save({"model": build_sam2(ts.TINY_ARCH[0], None, device="cpu",
                                    hydra_overrides_extra=list(ts.TINY_ARCH[1])).state_dict()}, tmp / "sam2.pt")
    for name, cfg in ((tp.TINY_CLIP, tp.TINY_CLIP_CFG), (tl.TINY_SIGLIP, tl.TINY_SIGLIP_CFG)):
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp)
    for name in (tp.TINY_CLIP, tl.TINY_SIGLIP):
        torch.save(open_clip.create_model(name).state_dict(), tmp / f"{name}.bin")
    return {"sam": ("tiny", tmp / "sam_tiny.pth"), "sam2": (ts.TINY, tmp / "sam2.pt"),
            "openclip": (tp.TINY_CLIP, tmp / f"{tp.TINY_CLIP}.bin"),
            "siglip": (tl.TINY_SIGLIP, tmp / f"{tl.TINY_SIGLIP}.bin")}


def time_one(generator, encoder, images, nms) -> dict:
    """Seconds per stage over ``images`` and the masks kept."""
    import numpy as np

    from preprocess.clip_features import level_crops
    from preprocess.mask_filter import masks_update
    from scene.language_features import LEVELS

    t = {"masks": 0.0, "filter": 0.0, "language": 0.0, "network": 0.0}
    kept = 0
    pred = generator.predictor
    for name in ("set_image", "predict_torch"):     # the network's share of generate_levels
        def timed(*a, _f=getattr(pred, name), **k):
            t0 = time.perf_counter()
            out = _f(*a, **k)
            t["network"] += time.perf_counter() - t0
            return out
        setattr(pred, name, timed)
    for rgb in images:
        t0 = time.perf_counter()
        levels = generator.generate_levels(rgb)
        t1 = time.perf_counter()
        levels = masks_update(levels, **nms)
        t2 = time.perf_counter()
        crops = np.concatenate([level_crops(rgb, levels[lv]) for lv in LEVELS])
        encoder.encode(crops)
        t3 = time.perf_counter()
        t["masks"] += t1 - t0
        t["filter"] += t2 - t1
        t["language"] += t3 - t2
        kept += len(crops)
    for name in ("set_image", "predict_torch"):
        delattr(pred, name)
    return {**t, "kept": kept}


def main(argv=None) -> int:
    import tempfile

    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3, help="images per model pair (default 3)")
    p.add_argument("--size", nargs=2, type=int, default=(128, 96), metavar=("W", "H"), help="image size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared 2-core machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from preprocess.mask_filter import LANGSPLAT_NMS
    from preprocess.models import build_image_encoder
    from preprocess.sam2_levels import build_sam2_generator
    from preprocess.sam_levels import LANGSPLAT_AMG, LevelMaskGenerator
    from scene.foundation import load_sam

    rng = np.random.default_rng(0)
    W, H = args.size
    images = []
    for _ in range(args.images):   # flat rectangles on a gradient: masks that differ between points
        img = np.tile(np.linspace(0, 255, W, dtype=np.uint8)[None, :, None], (H, 1, 3))
        for _ in range(5):
            y, x = rng.integers(0, H - 10), rng.integers(0, W - 10)
            img[y:y + rng.integers(8, H // 2), x:x + rng.integers(8, W // 2)] = rng.integers(0, 256, 3)
        images.append(img)
    amg = {**LANGSPLAT_AMG, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    nms = {**LANGSPLAT_NMS, "score_thr": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        m = tiny_models(Path(tmp))
        gens = {"sam": LevelMaskGenerator(load_sam(m["sam"][0], m["sam"][1], "cpu"), **amg),
                "sam2": build_sam2_generator(m["sam2"][0], m["sam2"][1], "cpu", **amg)}
        encs = {k: build_image_encoder(m[k][0], m[k][1], "cpu", "fp32", 128) for k in ("openclip", "siglip")}
        print(f"{args.images} images {W}x{H}, LangSplat points / crops / NMS (score thresholds off), "
              f"{args.threads} thread(s), tiny random-weight models")
        print("| masks | language | images/s | s/image | mask network | level filter chain | mask NMS | "
              "crops + language | masks kept/image |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for g, gen in gens.items():
            for e, enc in encs.items():
                time_one(gen, enc, images[:1], nms)          # warm-up (first-call allocations)
                t = time_one(gen, enc, images, nms)
                total = t["masks"] + t["filter"] + t["language"]
                t["chain"] = t["masks"] - t["network"]
                share = {k: 100 * t[k] / total for k in ("network", "chain", "filter", "language")}
                print(f"| {g} | {e} | {len(images) / total:.2f} | {total / len(images):.2f} | "
                      f"{share['network']:.0f}% | {share['chain']:.0f}% | {share['filter']:.1f}% | "
                      f"{share['language']:.1f}% | {t['kept'] / len(images):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
