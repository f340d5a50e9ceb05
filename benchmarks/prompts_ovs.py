"""Text, image and point prompts on one trained synthetic run, scored like LERF-OVS (mIoU / mAcc@0.25).

    python -m benchmarks.prompts_ovs -m output/default/default

* text: each labelled category as a text query (the default pipeline's queries);
* image: per category, the box around the object in the unlabelled view where it covers most pixels
  (the generator's ground-truth id buffer), as an image query;
* point: per labelled (frame, category) unit, one point at the object's innermost pixel of that
  frame's gt mask (distance transform), as a point prompt in that frame.
Text and image selections are scored in every labelled frame (as eval_lerf.py does); a point
prompt in the frame it was placed in. Selections are computed in memory: nothing in the run changes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from arguments.cli import load_run_config
from gaussian_renderer import render
from preprocess.image_prompt import _synthetic_config, embed_image_prompt
from preprocess.synthetic.generate import MANIFEST, build_scene
from preprocess.synthetic.render import id_buffers
from scene.dataset import load_scene_from_config
from scene.lerf_eval import iou
from scene.lerf_labels import ensure_gt, read_gt
from scene.runtime import resolve_device
from stages.prompts import point_selection
from stages.query import build_encoder, label_root_of, load_query_model, scene_name, select_from_vectors


def silhouette(cfg, params, sel, cam) -> np.ndarray:
    sub = {k: v[sel] for k, v in params.items() if k != "ins_feat"}
    out = render(sub, cam, bg=torch.ones(3, device=sel.device), return_depth=False, **cfg.renderer.kwargs())
    return (out.alpha[..., 0] > cfg.eval.silhouette_alpha).cpu().numpy()


def summary(ious: list[float]) -> str:
    v = np.asarray(ious)
    return f"{100 * v.mean():6.2f} / {100 * (v > 0.25).mean():6.1f}  ({len(v)} units)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="a trained run of a generated scene")
    a = p.parse_args(argv)
    run = Path(a.model_path)
    cfg = load_run_config(run)
    device = resolve_device(cfg.run.device)
    cams = {c.image_name: c for c in load_scene_from_config(cfg.data, -1).all_cameras}
    gt = read_gt(ensure_gt(label_root_of(cfg), scene_name(cfg)))
    cats = sorted({c for f in gt.values() for c in f})
    qm = load_query_model(cfg, run, device)
    enc, _ = build_encoder(cfg, run)
    neg = enc.encode(list(cfg.query.negatives)).to(device)
    with torch.no_grad():
        def frame_ious(sels: dict) -> list[float]:
            return [iou(silhouette(cfg, qm.params, sels[c], cams[f]), m)
                    for f, fm in gt.items() for c, m in fm.items() if c in sels]

        text = {c: s for c, (s, _) in zip(cats, select_from_vectors(cfg, qm, enc.encode(cats).to(device), neg))}
        rec = json.loads((Path(cfg.data.source_path) / MANIFEST).read_text())
        layout, _ = build_scene(int(rec["seed"]), _synthetic_config(rec))
        names = [o.name for o in layout.objects]
        best: dict = {}
        for name, cam in cams.items():
            if name in gt:
                continue
            obj = id_buffers(layout, cam)[1]
            for c in cats:
                n = int((obj == names.index(c)).sum())
                if n > best.get(c, (0,))[0]:
                    ys, xs = np.nonzero(obj == names.index(c))
                    best[c] = (n, name, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        image = {}
        for c, (_, view, box) in best.items():
            img = np.round(cams[view].load_image().numpy() * 255).astype(np.uint8)
            vec, info = embed_image_prompt(cfg, img, box, f"{view}.png", device, list(cams.values()))
            assert info["object"] == c, (c, info)
            image[c] = select_from_vectors(cfg, qm, vec.to(device), neg)[0][0]
        point = []
        for f, fm in gt.items():
            for c, m in fm.items():
                dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 5)
                y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
                sel, _ = point_selection(cfg, qm, cams[f], [(x + 0.5, y + 0.5)])
                point.append(iou(silhouette(cfg, qm.params, sel, cams[f]), m))
    rows = {"text": frame_ious(text), "image": frame_ious(image), "point": point}
    print(f"{run}: mIoU / mAcc@0.25 (%)")
    for k, v in rows.items():
        print(f"  {k:<6} {summary(v)}")
    print("  image crops: " + ", ".join(f"{c} <- {best[c][1]} {list(best[c][2])}" for c in cats if c in best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
