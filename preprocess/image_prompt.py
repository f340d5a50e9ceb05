"""Image prompts: an image (or a box of it) -> one embedding in the space of the scene's language features.

docs/method.md §5.7. ``query.py --image crop.png [--box x0 y0 x1 y1]`` treats the vector exactly as a
text query (stages/query.py ``select_from_vectors``). The encoder follows the features' provenance
(``scene/provenance.py``):

* OpenCLIP features (our ``manifest.json``, or no record: LangSplat's ViT-B-16): the OpenCLIP image
  tower on the box prepared like a mask crop (``clip_features.mask_crop`` with the whole box as the
  mask: centred zero-pad to a square, resize to 224), weights from ``ckpts/`` (``scene/foundation.py``);
* synthetic features (``synthetic.json``): the generator's own imitation. The crop must be a crop of
  one of the scene's views at the run's resolution (exact match, ``cv2.matchTemplate`` TM_SQDIFF); that
  view's object-id buffer is re-cast with the generator, the object covering most of the box is the
  one shown, and its vector is made as a whole-object mask's (``synthetic/masks.py``): the object's text
  vector, CLIP confusion, CLIP noise, then the modality gap ``noise.image_text_cos``, drawn from a
  generator seeded with (scene seed, view, box).
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from scene.errors import StageError

STREAM_IMAGE_PROMPT = 0x1F


def read_image(path) -> np.ndarray:
    """uint8 [H, W, 3] RGB of an image file; a missing file or one that is not an image: one line."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise StageError(f"{p}: image not found (--image)")
    if not p.is_file():
        raise StageError(f"{p}: is a folder, not an image file (--image)")
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise StageError(f"{p}: not a readable image ({reason}): give a PNG or JPEG file (--image)") from None


def check_box(box, width: int, height: int, path="the image") -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) as ints, pixel coordinates, x1 / y1 exclusive; the whole image when ``box`` is None."""
    if box is None:
        return 0, 0, int(width), int(height)
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise StageError(f"--box {x0} {y0} {x1} {y1} has zero area: give x0 y0 x1 y1 with x0 < x1 and y0 < y1 "
                         f"(x1, y1 exclusive)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise StageError(f"--box {x0} {y0} {x1} {y1} is outside {path}, which is {width}x{height} pixels "
                         f"(0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height})")
    return x0, y0, x1, y1


def default_name(path, box=None) -> str:
    """``image_<file stem>[_<x0>_<y0>_<x1>_<y1>]``."""
    name = f"image_{Path(path).stem}"
    return name + ("_" + "_".join(str(int(v)) for v in box) if box is not None else "")


# ---------------------------------------------------------------------------------------------
# OpenCLIP
def openclip_crop(image: np.ndarray, box) -> np.ndarray:
    """uint8 [224, 224, 3]: the box as a mask crop (``mask_crop`` with the whole box as the mask)."""
    from .clip_features import mask_crop

    x0, y0, x1, y1 = box
    return mask_crop(image, np.ones(image.shape[:2], dtype=bool), (x0, y0, x1 - x0, y1 - y0))


def openclip_vector(image: np.ndarray, box, resolved: dict, device, ckpt_dir=None) -> tuple[torch.Tensor, dict]:
    """([1, C] unit float32, record) from the OpenCLIP image tower of the resolved text encoder's model."""
    from scene.encoders import known_openclip_weights
    from scene.foundation import (find_openclip_weights, image_mean_std, load_openclip, resolve_precision,
                                  sha256_file)

    from .clip_features import OpenCLIPImageEncoder

    weights = find_openclip_weights(ckpt_dir, model=resolved["model"])
    sha = sha256_file(weights)
    want = resolved.get("weights_sha256")
    if want and sha != want and (known_openclip_weights(sha) is None
                                 or known_openclip_weights(sha) != known_openclip_weights(want)):
        raise StageError(f"OpenCLIP weights {weights} (sha256 {sha[:12]}...) are not the ones that made the "
                         f"scene's features (sha256 {str(want)[:12]}...): put that file in the weights folder "
                         f"(see ckpts/README.md)")
    device = torch.device(device if device is not None else "cpu")
    precision = resolve_precision("auto", device)
    enc = OpenCLIPImageEncoder(load_openclip(resolved["model"], weights, device, precision),
                               mean_std=image_mean_std(resolved["model"]))
    vec = enc.encode(openclip_crop(image, box)[None])
    return vec, {"encoder": "openclip", "model": resolved["model"], "pretrained": resolved.get("pretrained"),
                 "precision": precision, "weights_file": str(weights), "weights_sha256": sha}


# ---------------------------------------------------------------------------------------------
# synthetic scenes
def _synthetic_config(rec: dict):
    from .synthetic.config import NoiseKnobs, SceneConfig

    conf = dict(rec["config"])
    noise = NoiseKnobs(**{f.name: conf["noise"][f.name] for f in fields(NoiseKnobs) if f.name in conf["noise"]})
    keys = {f.name for f in fields(SceneConfig)} - {"noise"}
    return SceneConfig(noise=noise, **{k: v for k, v in conf.items() if k in keys})


def find_crop(crop: np.ndarray, cameras) -> tuple:
    """(camera, x, y) of the first view whose image holds ``crop`` exactly at (x, y), else None."""
    import cv2

    h, w = crop.shape[:2]
    for cam in cameras:
        view = np.round(cam.load_image().numpy() * 255).astype(np.uint8)
        if view.shape[0] < h or view.shape[1] < w:
            continue
        sq = cv2.matchTemplate(view.astype(np.float32), crop.astype(np.float32), cv2.TM_SQDIFF)
        _, _, (x, y), _ = cv2.minMaxLoc(sq)
        if np.array_equal(view[y:y + h, x:x + w], crop):
            return cam, int(x), int(y)
    return None


def synthetic_vector(crop: np.ndarray, source_path, cameras, path="the image") -> tuple[torch.Tensor, dict]:
    """([1, 512] unit float32, record): the generator's image-side vector of the object the crop shows."""
    from scene.encoders import HashTextEncoder

    from .synthetic.generate import MANIFEST, build_scene
    from .synthetic.masks import GENERIC, _adjacent_pairs, _unit, to_image_space
    from .synthetic.render import id_buffers

    rec = json.loads((Path(source_path) / MANIFEST).read_text(encoding="utf-8"))
    seed, cfg = int(rec["seed"]), _synthetic_config(rec)
    hit = find_crop(crop, cameras)
    if hit is None:
        raise StageError(f"{path}: the crop matches no view of this synthetic scene exactly (at the run's "
                         f"resolution): synthetic scenes answer crops of their own views only")
    cam, x, y = hit
    layout, gen_cams = build_scene(seed, cfg)
    vi = [c.name for c in gen_cams].index(cam.image_name)
    _, obj, _, _ = id_buffers(layout, cam)          # the run's camera: its pose and resolution
    h, w = crop.shape[:2]
    ids = obj[y:y + h, x:x + w]
    counts = np.bincount(ids[ids >= 0].ravel(), minlength=len(layout.objects))
    if counts.sum() == 0:
        raise StageError(f"{path}: the crop (box {x} {y} {x + w} {y + h} of view {cam.image_name}) shows only "
                         f"background, no object: crop an object")
    o = int(np.argmax(counts))
    ts = rec.get("text_space") or {}
    encoder = HashTextEncoder(dim=int(ts.get("dim", 512)), shared=float(ts.get("shared", 0.2)))
    names = [ob.name for ob in layout.objects]
    knobs = cfg.noise
    rng = np.random.default_rng([seed, STREAM_IMAGE_PROMPT, vi, x, y, x + w, y + h])
    u_conf, u_kind = rng.random(), rng.random()
    v, shown = encoder.encode_numpy([names[o]])[0], names[o]
    if u_conf < knobs.clip_confusion:                # as a mask's: a neighbour's vector or the generic one
        nb = sorted({b if a == o else a for a, b in _adjacent_pairs(obj) if o in (a, b)})
        shown = names[nb[int(u_kind * 2 * len(nb)) % len(nb)]] if u_kind < 0.5 and nb else GENERIC
        v = encoder.encode_numpy([shown])[0]
    v = _unit(v)
    if knobs.clip_noise > 0:
        v = v + knobs.clip_noise * rng.standard_normal(v.shape[0]) / np.sqrt(v.shape[0])
    vec = to_image_space(v, knobs.image_text_cos).astype(np.float32)
    return torch.from_numpy(vec)[None], {
        "encoder": "synthetic", "view": cam.image_name, "box_in_view": [x, y, x + w, y + h], "object": names[o],
        "object_index": o, "covered": round(float(counts[o]) / float(h * w), 4), "vector_of": shown}


def embed_image_prompt(cfg, image: np.ndarray, box, path, device=None, cameras=None) -> tuple[torch.Tensor, dict]:
    """([1, C] float32 unit vector, image-encoder record) of ``image[box]`` for the scene of ``cfg``.
    ``cameras``: the scene's cameras at the run's resolution (synthetic scenes; default: loaded)."""
    from scene.provenance import TextEncoderMismatchError, resolve_text_encoder

    q = cfg.query
    try:
        resolved = resolve_text_encoder(q.text_encoder, cfg.data.source_path, cfg.instance.features_folder,
                                        q.text_table, check_space=False)
    except TextEncoderMismatchError as e:
        raise StageError(str(e)) from None
    prov = resolved["provenance"]
    if prov["encoder"] == "hash":
        if cameras is None:
            from scene.dataset import load_scene_from_config
            cameras = load_scene_from_config(cfg.data, -1).all_cameras
        x0, y0, x1, y1 = box
        return synthetic_vector(image[y0:y1, x0:x1], cfg.data.source_path, cameras, path)
    if resolved["encoder"] != "openclip":            # a table on OpenCLIP features: its model's image tower
        resolved = dict(resolved, model=prov.get("model"), pretrained=prov.get("pretrained"),
                        weights_sha256=prov.get("weights_sha256"))
    if resolved.get("model") is None:
        raise StageError(f"{prov['folder']}: the model that made the features is unknown; image queries need "
                         f"its OpenCLIP image tower")
    return openclip_vector(image, box, resolved, device)
