"""Contact sheet of a generated synthetic scene: for a few labelled frames, the RGB view, the
"SAM" id maps of levels l, s and default (colourised; black = -1) and the ground-truth masks.

``python -m preprocess.synthetic.contact_sheet --scene-dir data/synthetic/demo --out docs/synthetic_contact_sheet.png``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from arguments.cli import run_cli
from scene.atomic import atomic_path


def colorize(ids: np.ndarray) -> np.ndarray:
    """[H,W] integer ids -> [H,W,3] uint8, a fixed pseudo-random colour per id, black for -1."""
    ids = ids.astype(np.int64)
    rng = np.random.default_rng(12345)
    pal = rng.integers(40, 256, size=(int(max(ids.max(), 0)) + 1, 3)).astype(np.uint8)
    out = np.zeros(ids.shape + (3,), np.uint8)
    m = ids >= 0
    out[m] = pal[ids[m]]
    return out


def gt_overlay(image: np.ndarray, gt_dir: Path):
    """Image dimmed, each gt mask tinted; returns (overlay [H,W,3] uint8, [(name, centroid)])."""
    out = (image.astype(np.float64) * 0.35)
    labels = []
    for k, f in enumerate(sorted(gt_dir.glob("*.png"))):
        m = np.asarray(Image.open(f)) > 127
        if not m.any():
            continue
        col = np.array(colorize(np.array([[k + 3]]))[0, 0], np.float64)
        out[m] = 0.3 * image[m] + 0.7 * col
        ys, xs = np.nonzero(m)
        labels.append((f.stem, (float(xs.mean()), float(ys.mean()))))
    return out.astype(np.uint8), labels


def make_sheet(scene_dir: Path, out: Path, n_frames: int = 4, scale: int = 2) -> Path:
    scene_dir = Path(scene_dir)
    q = json.loads((scene_dir / "queries.json").read_text())
    label_dir = (scene_dir / q["label_dir"]).resolve()
    frames = list(q["frames"])[:n_frames]
    titles = ["RGB", "level l (3)", "level s (1)", "level default (0)", "gt masks"]
    rows = []
    for fr in frames:
        img = np.asarray(Image.open(scene_dir / "images" / f"{fr}.png").convert("RGB"))
        s = np.load(scene_dir / "language_features" / f"{fr}_s.npy")
        ov, labels = gt_overlay(img, label_dir / "gt" / fr)
        panels = [img, colorize(s[3]), colorize(s[1]), colorize(s[0]), ov]
        H, W = img.shape[:2]
        row = Image.new("RGB", (len(panels) * (W * scale + 4), H * scale + 14), "white")
        d = ImageDraw.Draw(row)
        for k, p in enumerate(panels):
            x0 = k * (W * scale + 4)
            row.paste(Image.fromarray(p).resize((W * scale, H * scale), Image.NEAREST), (x0, 14))
            d.text((x0 + 2, 1), f"{fr}  {titles[k]}", fill="black")
        x0 = (len(panels) - 1) * (W * scale + 4)
        for name, (cx, cy) in labels:
            d.text((x0 + cx * scale - 3 * len(name), 14 + cy * scale - 5), name, fill="white")
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height + 4 for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    with atomic_path(out) as tmp:  # same suffix: PIL still picks the format from it
        sheet.save(tmp)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocess.synthetic.contact_sheet", description=__doc__)
    p.add_argument("--scene-dir", required=True, help="a generated scene folder (<root>/<scene>)")
    p.add_argument("--out", default="docs/synthetic_contact_sheet.png", help="output PNG")
    p.add_argument("--frames", type=int, default=4, help="number of labelled frames to show")
    p.add_argument("--scale", type=int, default=2, help="pixel upscale factor")

    def sheet(a) -> int:
        try:
            print(make_sheet(Path(a.scene_dir), Path(a.out), a.frames, a.scale))
        except (OSError, KeyError, ValueError) as e:  # a missing or foreign folder: say which one
            raise ValueError(f"cannot make a contact sheet of {a.scene_dir}: {e}") from None
        return 0

    return run_cli(sheet, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
