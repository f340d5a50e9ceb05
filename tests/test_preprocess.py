"""Real preprocessing with tiny random-weight models built by the real builders (no network).

* SAM: ``segment_anything.modeling`` parts with tiny dims (img_size 128), saved as a state_dict;
* OpenCLIP: a 2-layer ViT registered as an open_clip config (embed_dim 512), saved to
  ``open_clip_pytorch_model.bin`` and loaded through ``create_model(pretrained=<file>)``;
* a deterministic fake ``SamPredictor.predict_torch`` (point-dependent squares with controlled
  IoU / stability, holes, islands and thin tails) makes every filter path fire.
"""
import hashlib
import json
import os
import subprocess
import sys
from functools import partial

import cv2
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.predictor import SamPredictor
from segment_anything.utils.amg import batched_mask_to_box, box_xyxy_to_xywh

import preprocess.run as prun
from preprocess.clip_features import CLIP_MEAN, CLIP_STD, OpenCLIPImageEncoder, level_crops, mask_crop
from scene import foundation
from scene.foundation import load_openclip, load_sam
from preprocess.mask_filter import LANGSPLAT_NMS, masks_update
from preprocess.sam_levels import LANGSPLAT_AMG, LEVELS, LevelMaskGenerator
from scene.foundation import WeightsError
from scene.colmap import ColmapCamera, ColmapImage, write_model
from scene.dataset import load_scene
from scene.views import target_size_langsplat
from scene.grounding import CANONICAL_NEGATIVES
from scene.encoders import (ImageEncoder, OpenCLIPTextEncoder, TextEncoder,
                            build_text_encoder)
from scene import language_features
from scene.language_features import check_folder, check_ids, load_clip, load_seg

TINY_CLIP = "cos3d-test-tiny-vit"
TINY_CLIP_CFG = {"embed_dim": 512,
                 "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def build_tiny_sam(dim: int = 32) -> Sam:
    """SAM from the real modules with tiny dims; image_size 128 (patch 16 -> 8x8 embedding)."""
    size = 128
    return Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=32, img_size=size, mlp_ratio=2, num_heads=2,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=16,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=4,
                                      out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // 16, size // 16),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2,
                                 iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of tiny torch ops: with 2 threads on a loaded 2-core machine the OpenMP barriers
    make them ~40x slower (measured); one thread keeps the file at a few seconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    torch.save(build_tiny_sam().state_dict(), d / "sam_tiny.pth")
    torch.save(build_tiny_sam(dim=16).state_dict(), d / "sam_other.pth")
    cfg = tmp_path_factory.mktemp("clip_cfg")
    (cfg / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg)
    torch.save(open_clip.create_model(TINY_CLIP).state_dict(), d / "open_clip_pytorch_model.bin")
    return d


@pytest.fixture
def tiny(monkeypatch, ckpts):
    monkeypatch.setitem(foundation.SAM_BUILDERS, "tiny", build_tiny_sam)
    return ["--ckpt_dir", str(ckpts), "--sam_model", "tiny", "--sam_checkpoint", str(ckpts / "sam_tiny.pth"),
            "--clip_model", TINY_CLIP, "--device", "cpu"]


def make_scene(root, n=3, w=64, h=48):
    """``root/images/frame_0000i.png`` (coloured rectangles) + a COLMAP text model."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for i in range(n):
        img = np.full((h, w, 3), 40 * i, np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            img[y:y + rng.integers(6, 20), x:x + rng.integers(6, 24)] = rng.integers(0, 256, 3)
        name = f"frame_{i + 1:05d}.png"
        Image.fromarray(img).save(root / "images" / name)
        images[i + 1] = ColmapImage(i + 1, np.array([1.0, 0, 0, 0]), np.array([0.1 * i, 0, 4.0]), 1, name,
                                    np.zeros((0, 2)), np.zeros(0, np.int64))
    write_model(root / "sparse" / "0", {1: ColmapCamera(1, "PINHOLE", w, h, np.array([60.0, 60, w / 2, h / 2]))},
                images, None)
    return root


# ---------------------------------------------------------------------------------------------
# deterministic fake SAM head
# ---------------------------------------------------------------------------------------------
def _hash(x, y, k):
    return torch.frac(torch.sin(x * (12.9898 + k) + y * (78.233 + 3 * k)) * 43758.5453).abs()


def fake_predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                       multimask_output=True, return_logits=False):
    """Per point (crop pixels x, y) and output k: a square of half-size 4/8/13 around the point
    snapped to a 6-px grid; logit 3 on its core, 0.5 on a (x+y) % q == 0 lattice (so stability
    = core / square is set by q), -3 outside. s: IoU .705-.72 and stability < .98 (all scores <=
    .7 -> fallback); m: IoU .6-.99, q in {5, 9, none}, some with a 3x3 island or a 12-px tail;
    l: IoU .8-.99, some with a 3x3 hole. ``self._fake_only = k`` returns output k alone."""
    h, w = self.original_size
    ih, iw = self.input_size
    p = point_coords[:, 0, :].double().cpu()
    x, y = p[:, 0] * w / iw, p[:, 1] * h / ih
    cx, cy = (torch.floor(x / 6) * 6 + 3).long(), (torch.floor(y / 6) * 6 + 3).long()
    yy, xx = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    lat = xx + yy                                                      # [1, h, w]
    logits, ious = [], []
    for k, half in enumerate((4, 8, 13)):
        sq = (dx.abs() < half) & (dy.abs() < half)
        r1, r2 = _hash(x, y, k), _hash(x, y, k + 10)
        if k == 0:
            q, iou = torch.full_like(cx, 7), 0.705 + 0.015 * r1
        elif k == 1:
            q, iou = torch.where(r2 < 0.3, 5, torch.where(r2 < 0.6, 9, 10 ** 6)), 0.6 + 0.39 * r1
        else:
            q, iou = torch.where(r2 < 0.5, 9, 10 ** 6), 0.8 + 0.19 * r1
        ring = sq & (lat % q[:, None, None] == 0)
        lg = torch.where(sq & ~ring, 3.0, torch.where(ring, 0.5, -3.0))
        r3 = _hash(x, y, k + 20)[:, None, None]
        if k == 1:
            island = (dx >= -3) & (dx < 0) & (dy >= -12) & (dy < -9) & (r3 < 0.5)
            tail = (dy == 0) & (dx >= half) & (dx < half + 12) & (r3 > 0.6)
            lg = torch.where(island | tail, 3.0, lg)
        if k == 2:
            lg = torch.where((dx.abs() <= 1) & (dy.abs() <= 1) & (r3 < 0.5), -3.0, lg)
        logits.append(lg)
        ious.append(iou)
    logits = torch.stack(logits, 1).float().to(point_coords.device)      # [B, 3, h, w]
    ious = torch.stack(ious, 1).float().to(point_coords.device)          # [B, 3]
    only = getattr(self, "_fake_only", None)
    if only is not None:
        logits, ious = logits[:, only:only + 1], ious[:, only:only + 1]
    return logits, ious, logits[..., :4, :4]


@pytest.fixture
def fake_sam(monkeypatch):
    monkeypatch.setattr(SamPredictor, "predict_torch", fake_predict_torch)


def same_records(a, b):
    assert len(a) == len(b)
    for r, s in zip(a, b):
        assert np.array_equal(r["segmentation"], s["segmentation"])
        for k in ("area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"):
            assert r[k] == s[k], k


def test_levels_equal_upstream_generate_per_level(tmp_path, fake_sam):
    """default == upstream generate(); s/m/l == upstream generate() on that output alone (docs/method.md §6.2)."""
    sam = build_tiny_sam()
    img = np.asarray(Image.open(make_scene(tmp_path / "lv", n=1, w=80, h=60) / "images" / "frame_00001.png"))
    gen = LevelMaskGenerator(sam, **LANGSPLAT_AMG)
    levels = gen.generate_levels(img)
    up = SamAutomaticMaskGenerator(sam, **LANGSPLAT_AMG)
    same_records(levels["default"], up.generate(img))
    for k, lv in enumerate(LEVELS[1:]):
        up.predictor._fake_only = k
        same_records(levels[lv], up.generate(img))
    n = {lv: len(v) for lv, v in levels.items()}
    assert all(v > 3 for v in n.values()), n
    assert len({tuple(r["crop_box"]) for r in levels["default"]}) > 1           # several crops survive
    # the cleanup filled the fake's holes (l) and removed its islands (m), which exist without it
    raw = LevelMaskGenerator(sam, **{**LANGSPLAT_AMG, "min_mask_region_area": 0}).generate_levels(img)
    labels = lambda m: cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0]  # noqa: E731
    assert any(labels(~r["segmentation"]) > 2 for r in raw["l"])
    assert any(labels(r["segmentation"]) > 2 for r in raw["m"])
    for r in levels["l"] + levels["m"]:
        m = r["segmentation"].astype(np.uint8)
        assert cv2.connectedComponents(m, connectivity=8)[0] == 2
        assert cv2.connectedComponents(1 - m, connectivity=8)[0] == 2
    # the per-level filter: every path fires
    upd = masks_update(levels, **LANGSPLAT_NMS)
    assert all(r["predicted_iou"] * r["stability_score"] <= 0.7 for r in levels["s"])
    assert len(upd["s"]) == 3                                                   # top-min(3, N) fallback
    kept = sorted(upd["s"], key=lambda r: -r["predicted_iou"] * r["stability_score"])
    best = sorted(levels["s"], key=lambda r: -r["predicted_iou"] * r["stability_score"])[:3]
    assert [r["point_coords"] for r in kept] == [r["point_coords"] for r in best]
    no_iou = masks_update(levels, **{**LANGSPLAT_NMS, "iou_thr": 1.0})
    no_inner = masks_update(levels, **{**LANGSPLAT_NMS, "inner_thr": 0.0})
    assert len(upd["m"]) < len(no_iou["m"])                                     # tails: IoU > .8, box IoU < .7
    assert len(upd["default"]) < len(no_inner["default"])                       # s squares inside l squares
    assert 0 < len(upd["m"]) < n["m"]
    for lv in LEVELS:  # kept records keep the generator order
        idx = [next(i for i, r in enumerate(levels[lv]) if r is k) for k in upd[lv]]
        assert idx == sorted(idx)


# ---------------------------------------------------------------------------------------------
# crops, seg maps, sizes
# ---------------------------------------------------------------------------------------------
def test_mask_crop_off_by_one_padding_and_resize():
    img = np.zeros((12, 16, 3), np.uint8)
    img[..., 0] = np.arange(16)[None, :] * 10 + 5          # red encodes the column
    img[..., 1] = np.arange(12)[:, None] * 20 + 3          # green encodes the row
    img[..., 2] = 200
    mask = np.zeros((12, 16), bool)
    mask[2:6, 3:11] = True                                  # rows 2..5, cols 3..10 inclusive
    mask[3, 4] = False
    bbox = box_xyxy_to_xywh(batched_mask_to_box(torch.from_numpy(mask))).tolist()
    assert bbox == [3, 2, 7, 3]                              # inclusive max: w = 10 - 3, h = 5 - 2
    sq = np.zeros((7, 7, 3), np.uint8)                       # 3x7 crop, centred rows start at (7-3)//2 = 2
    for r in range(3):
        for c in range(7):
            if (2 + r, 3 + c) != (3, 4):
                sq[2 + r, c] = (10 * (3 + c) + 5, 20 * (2 + r) + 3, 200)
    out = mask_crop(img, mask, bbox)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.array_equal(out, cv2.resize(sq, (224, 224), interpolation=cv2.INTER_LINEAR))
    # tall mask: columns are centred instead; a constant-colour square crop resizes to a constant
    img2 = np.full((20, 20, 3), 77, np.uint8)
    m2 = np.zeros((20, 20), bool)
    m2[1:11, 5:9] = True                                     # bbox [5, 1, 3, 9]: crop 9 x 3
    out2 = mask_crop(img2, m2, [5, 1, 3, 9])
    sq2 = np.zeros((9, 9, 3), np.uint8)
    sq2[:, 3:6] = 77
    assert np.array_equal(out2, cv2.resize(sq2, (224, 224)))
    m3 = np.zeros((20, 20), bool)
    m3[2:9, 4:11] = True
    assert np.all(mask_crop(img2, m3, [4, 2, 6, 6]) == 77)   # 6x6 inside the mask -> uniform 224x224
    assert np.all(mask_crop(img2, m3, [4, 2, 0, 0]) == 0)    # degenerate bbox -> zero crop


def rec(mask):
    return {"segmentation": mask}


def test_seg_maps_overwrite_offsets_and_ids():
    h, w = 4, 6
    a = np.zeros((h, w), bool); a[0:3, 0:4] = True
    b = np.zeros((h, w), bool); b[1:4, 2:6] = True
    c = np.zeros((h, w), bool); c[:, :] = True
    d = np.zeros((h, w), bool); d[0, 0] = True
    e = np.zeros((h, w), bool); e[0:2, 0:2] = True
    seg, counts = prun.build_seg_maps({"default": [rec(a), rec(b)], "s": [], "m": [rec(c)],
                                       "l": [rec(d), rec(e)]}, h, w)
    assert counts == [2, 0, 1, 2] and seg.dtype == np.float32 and seg.shape == (4, h, w)
    want0 = np.array([[0, 0, 0, 0, -1, -1],
                      [0, 0, 1, 1, 1, 1],
                      [0, 0, 1, 1, 1, 1],
                      [-1, -1, 1, 1, 1, 1]])
    assert np.array_equal(seg[0], want0)                     # b painted after a wins the overlap
    assert np.all(seg[1] == -1)                              # empty level
    assert np.all(seg[2] == 2)                               # offset 2 + 0
    want3 = np.full((h, w), -1); want3[0:2, 0:2] = 4         # e (id 3 + 1) overwrites d (id 3)
    assert np.array_equal(seg[3], want3)
    assert seg.max() + 1 == sum(counts)


def test_target_size_and_read_image(tmp_path):
    assert target_size_langsplat(986, 728) == (986, 728)
    assert target_size_langsplat(1920, 1440) == (1440, 1080)
    assert target_size_langsplat(1000, 2185) == (494, 1079)        # int() truncation (docs/method.md §6.1)
    assert target_size_langsplat(1600, 1200, 800) == (800, 600)   # --resolution is a target width
    img = np.zeros((1100, 20, 3), np.uint8)
    img[:, :, 2] = 255                                       # red in BGR terms -> read back as RGB red
    cv2.imwrite(str(tmp_path / "x.png"), img)
    rgb = prun.read_image(tmp_path / "x.png")
    assert rgb.shape == (1080, 19, 3) and np.all(rgb[..., 0] == 255) and np.all(rgb[..., 2] == 0)


# ---------------------------------------------------------------------------------------------
# models: loading, encoders, text cache, no network
# ---------------------------------------------------------------------------------------------
def test_image_encoder_matches_manual_forward(ckpts):
    model = load_openclip(TINY_CLIP, ckpts / "open_clip_pytorch_model.bin", "cpu", "fp32")
    ref = open_clip.create_model(TINY_CLIP, pretrained=str(ckpts / "open_clip_pytorch_model.bin")).eval()
    enc = OpenCLIPImageEncoder(model, batch_size=2)
    assert isinstance(enc, ImageEncoder) and enc.dim == 512
    crops = np.random.default_rng(1).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    x = (crops.astype(np.float32) / 255 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    with torch.no_grad():
        want = ref.encode_image(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    want = want / want.norm(dim=-1, keepdim=True)
    got = enc.encode(crops)
    assert got.dtype == torch.float32 and got.shape == (5, 512)
    assert torch.allclose(got, want, atol=1e-5)
    assert enc.encode(crops[:0]).shape == (0, 512)


def test_load_errors(ckpts, tmp_path, monkeypatch):
    monkeypatch.setitem(foundation.SAM_BUILDERS, "tiny", build_tiny_sam)
    assert isinstance(load_sam("tiny", ckpts / "sam_tiny.pth", "cpu"), Sam)
    with pytest.raises(WeightsError, match=r"sam_other\.pth: does not load into SAM tiny"):
        load_sam("tiny", ckpts / "sam_other.pth", "cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(WeightsError, match=r"junk\.pth: cannot read as a SAM vit_h checkpoint.*fbaipublicfiles"):
        load_sam("vit_h", junk, "cpu")
    with pytest.raises(WeightsError, match=r"sam_tiny\.pth: does not load into OpenCLIP .*huggingface\.co/laion"):
        load_openclip(TINY_CLIP, ckpts / "sam_tiny.pth", "cpu")
    with pytest.raises(ValueError, match="unknown OpenCLIP model 'nope'"):
        load_openclip("nope", ckpts / "sam_tiny.pth", "cpu")


def test_openclip_text_encoder_cache_and_offline(ckpts, tmp_path, monkeypatch):
    import huggingface_hub
    import open_clip.factory
    import open_clip.pretrained

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    for mod, name in ((huggingface_hub, "hf_hub_download"), (open_clip.pretrained, "hf_hub_download"),
                      (open_clip.pretrained, "download_pretrained"), (open_clip.factory, "download_pretrained"),
                      (open_clip.factory, "download_pretrained_from_hf")):
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cache = tmp_path / "text_cache.pt"
    enc = build_text_encoder("openclip", ckpt_dir=ckpts, model=TINY_CLIP, device="cpu", cache_path=cache)
    assert isinstance(enc, OpenCLIPTextEncoder) and isinstance(enc, TextEncoder) and enc.dim == 512
    e = enc.encode(["red apple", "teapot", "red apple"] + list(CANONICAL_NEGATIVES))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    ref = open_clip.create_model(TINY_CLIP, pretrained=str(ckpts / "open_clip_pytorch_model.bin")).eval()
    with torch.no_grad():
        want = ref.encode_text(open_clip.get_tokenizer(TINY_CLIP)(["red apple", "teapot"]))
    want = want / want.norm(dim=-1, keepdim=True)
    assert e.shape == (7, 512) and e.dtype == torch.float32
    assert torch.allclose(e[:2], want, atol=1e-5) and torch.equal(e[0], e[2])
    assert torch.allclose(e.norm(dim=1), torch.ones(7), atol=1e-6)
    assert enc.model_calls == 1
    enc.encode(["teapot", "red apple"])
    assert enc.model_calls == 1                              # in-memory cache
    enc.encode(["teapot", "mug"])
    assert enc.model_calls == 2
    # a new object reads the disk cache and never loads the model
    enc2 = OpenCLIPTextEncoder(ckpt_dir=ckpts, model=TINY_CLIP, device="cpu", cache_path=cache)
    assert torch.equal(enc2.encode(["red apple", "mug"]), torch.stack([e[0], enc.encode(["mug"])[0]]))
    assert enc2.model_calls == 0 and enc2._model is None
    # other weights (other sha256) share the file but not the vectors
    sd = torch.load(ckpts / "open_clip_pytorch_model.bin", weights_only=True)
    sd["logit_scale"] = sd["logit_scale"] + 1
    other = tmp_path / "other.bin"
    torch.save(sd, other)
    enc3 = OpenCLIPTextEncoder(ckpt_dir=ckpts, model=TINY_CLIP, weights=other, device="cpu", cache_path=cache)
    enc3.encode(["red apple"])
    assert enc3.model_calls == 1 and len(torch.load(cache, weights_only=True)) == 2
    with pytest.raises(FileNotFoundError, match=r"open_clip_pytorch_model\.bin.*huggingface\.co/laion/CLIP-ViT-B-16"):
        build_text_encoder("openclip", ckpt_dir=tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# the CLI end to end
# ---------------------------------------------------------------------------------------------
def check_scene_files(scene, rows_by_level=None):
    """Format checks through the one loader (scene/language_features.py); returns {stem: (s, f)}."""
    data = load_scene(scene)
    check_folder(scene, data.all_cameras)
    out = {}
    for cam in data.all_cameras:
        s = np.load(scene / "language_features" / f"{cam.image_name}_s.npy")
        f = np.load(scene / "language_features" / f"{cam.image_name}_f.npy")
        assert s.dtype == np.float32 and s.shape == (4, cam.height, cam.width)
        assert f.dtype == np.float32 and f.ndim == 2 and f.shape[1] == 512
        assert np.array_equal(s, np.round(s)) and s.min() >= -1
        if len(f):
            assert s.max() + 1 == len(f)
            assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
        for lvl in range(4):
            seg = load_seg(scene, cam, lvl)
            assert torch.equal(seg, torch.from_numpy(s[lvl]).long())
            check_ids(seg, load_clip(scene, cam).shape[0], cam.image_name)
        assert torch.equal(load_clip(scene, cam), torch.from_numpy(f))
        out[cam.image_name] = (s, f)
    return out


def test_cli_fake_sam_end_to_end(tmp_path, tiny, fake_sam, ckpts):
    scene = make_scene(tmp_path / "sc", n=2)
    assert prun.main(["-s", str(scene)] + tiny) == 0
    files = check_scene_files(scene)
    # recompute independently of the CLI: generator -> filter -> maps and crops
    sam = load_sam("tiny", ckpts / "sam_tiny.pth", "cpu")
    gen = LevelMaskGenerator(sam, **LANGSPLAT_AMG)
    enc = OpenCLIPImageEncoder(load_openclip(TINY_CLIP, ckpts / "open_clip_pytorch_model.bin", "cpu"))
    for stem, (s, f) in files.items():
        rgb = prun.read_image(scene / "images" / f"{stem}.png")
        levels = masks_update(gen.generate_levels(rgb), **LANGSPLAT_NMS)
        counts = [len(levels[lv]) for lv in LEVELS]
        assert len(f) == sum(counts) and all(c > 0 for c in counts)
        off = np.cumsum([0] + counts)
        for j, lv in enumerate(LEVELS):
            covered = np.any([r["segmentation"] for r in levels[lv]], axis=0)
            assert np.array_equal(s[j] != -1, covered)                        # -1 only where no mask
            assert s[j][covered].min() >= off[j] and s[j].max() == off[j + 1] - 1
        want = enc.encode(np.concatenate([level_crops(rgb, levels[lv]) for lv in LEVELS]))
        assert np.allclose(f, want.numpy(), atol=1e-5)
    man = json.loads((scene / "language_features" / "manifest.json").read_text())
    assert man["complete"] is True and man["settings"]["generator"]["pred_iou_thresh"] == 0.7
    assert man["settings"]["sam"]["sha256"] == hashlib.sha256((ckpts / "sam_tiny.pth").read_bytes()).hexdigest()
    assert man["settings"]["clip"]["sha256"] == hashlib.sha256(
        (ckpts / "open_clip_pytorch_model.bin").read_bytes()).hexdigest()
    assert man["settings"]["mask_nms"] == LANGSPLAT_NMS and man["runtime"]["versions"]["segment-anything"] == "1.0"


def test_cli_real_tiny_sam_and_no_masks(tmp_path, tiny):
    scene = make_scene(tmp_path / "sc", n=2)
    loose = ["--pred_iou_thresh", "0", "--stability_score_thresh", "0", "--points_per_side", "16",
             "--points_per_batch", "32", "--clip_batch", "3"]
    assert prun.main(["-s", str(scene)] + tiny + loose) == 0
    files = check_scene_files(scene)
    assert all(len(f) > 0 for _, f in files.values())
    # nothing passes pred_iou > 1: all -1 maps, [0, 512] features, still accepted downstream
    scene2 = make_scene(tmp_path / "sc2", n=1)
    assert prun.main(["-s", str(scene2), "--pred_iou_thresh", "1.0", "--points_per_side", "8"] + tiny) == 0
    (s, f), = check_scene_files(scene2).values()
    assert np.all(s == -1) and f.shape == (0, 512)


def test_cli_resume_and_atomic_writes(tmp_path, tiny, fake_sam, monkeypatch):
    scene = make_scene(tmp_path / "sc", n=3)
    args = ["-s", str(scene), "--points_per_side", "8"] + tiny
    real_save, calls = language_features._write_npy, []

    def dying_save(path, arr):  # the 2nd image dies after its _f temp file was written
        calls.append(path.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_save(path, arr)

    monkeypatch.setattr(language_features, "_write_npy", dying_save)
    assert prun.main(args) == 130  # arguments.cli.run_cli: "interrupted: run the same command again"
    lf = scene / "language_features"
    assert sorted(p.name for p in lf.iterdir()) == ["frame_00001_f.npy", "frame_00001_s.npy", "manifest.json"]
    assert json.loads((lf / "manifest.json").read_text())["complete"] is False
    monkeypatch.setattr(language_features, "_write_npy", real_save)
    first = np.load(lf / "frame_00001_s.npy")
    (lf / ".frame_00003_s.npy.tmp999").write_bytes(b"half")  # a leftover from a killed process
    out = prun.run(prun.build_parser().parse_args(args))
    assert (out["processed"], out["skipped"]) == (2, 1)
    assert not list(lf.glob(".*")) and np.array_equal(np.load(lf / "frame_00001_s.npy"), first)
    check_scene_files(scene)

    def no_model(*a, **k):
        raise AssertionError("a finished scene must not load SAM")

    with monkeypatch.context() as m:
        m.setattr(foundation, "load_sam", no_model)
        assert prun.run(prun.build_parser().parse_args(args))["processed"] == 0
    # other settings: refused unless --overwrite
    assert prun.main(args + ["--nms_score_thr", "0.6"]) == 2
    assert prun.run(prun.build_parser().parse_args(args + ["--nms_score_thr", "0.6", "--overwrite"]))[
        "processed"] == 3


def test_cli_bad_input(tmp_path, tiny, ckpts, capsys):
    scene = make_scene(tmp_path / "sc", n=2)
    empty = tmp_path / "empty"
    empty.mkdir()

    def fails(argv, *needles):
        assert prun.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        for n in needles:
            assert n in err, (n, err)
        assert not (scene / "language_features").exists()

    fails(["-s", str(scene), "--ckpt_dir", str(empty), "--device", "cpu"], str(empty / "sam_vit_h_4b8939.pth"),
          "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth")
    no_clip = ["--ckpt_dir", str(empty), "--sam_model", "tiny", "--sam_checkpoint", str(ckpts / "sam_tiny.pth")]
    fails(["-s", str(scene)] + no_clip, "open_clip_model.safetensors or open_clip_pytorch_model.bin",
          "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K")
    fails(["-s", str(scene)] + tiny + ["--sam_checkpoint", str(ckpts / "sam_other.pth")],
          "sam_other.pth: does not load into SAM tiny")
    fails(["-s", str(scene)] + tiny + ["--clip_weights", str(ckpts / "sam_tiny.pth")],
          "sam_tiny.pth: does not load into OpenCLIP")
    fails(["-s", str(tmp_path / "nowhere")] + tiny, "scene folder not found")
    fails(["-s", str(empty)] + tiny, "no 'images/' folder")
    (scene / "images" / "frame_00002.png").write_bytes(b"\x89PNG garbage")
    fails(["-s", str(scene)] + tiny, str(scene / "images" / "frame_00002.png"), "cannot read image")
    (scene / "images" / "frame_00002.png").unlink()
    (scene / "images" / "frame_00001.jpg").write_bytes(b"")
    fails(["-s", str(scene)] + tiny, "same image name 'frame_00001'")


def test_module_entry_point_exit_code(tmp_path):
    out = subprocess.run([sys.executable, "-m", "preprocess.run", "-s", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120, cwd=prun.Path(prun.__file__).parents[1])
    assert out.returncode == 2
    assert out.stderr == f"error: scene folder not found: {tmp_path / 'none'}\n"


def test_masks_to_rle_equals_upstream():
    from segment_anything.utils.amg import mask_to_rle_pytorch

    from preprocess.sam_levels import masks_to_rle

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(7, 13, 9, generator=g) > 0.5
    masks[0] = True                                          # all ones: counts start with a 0 run
    masks[1] = False                                         # all zeros: one run
    masks[2, :5] = True
    assert masks_to_rle(masks) == mask_to_rle_pytorch(masks)
    assert masks_to_rle(masks[:0]) == []
