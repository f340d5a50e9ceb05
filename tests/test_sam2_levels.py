"""SAM 2 as the level mask generator: a tiny random-weight SAM 2.1 built by ``sam2.build_sam.build_sam2``
from the official tiny config with hydra overrides (Hiera embed_dim 8, stages 1-1-2-1, image
size 128), saved as ``{"model": state_dict}`` and loaded back by ``load_sam2`` (strict). The levels
are checked against SAM 2's own ``SAM2ImagePredictor.predict`` run point by point in the test."""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("sam2")
from sam2.build_sam import build_sam2  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from preprocess import sam2_levels  # noqa: E402
from preprocess.mask_filter import LANGSPLAT_NMS, masks_update  # noqa: E402
from preprocess.sam2_levels import build_sam2_generator, find_sam2_checkpoint, load_sam2  # noqa: E402
from scene.foundation import WeightsError  # noqa: E402
from scene.language_features import LEVELS, check_ids, id_maps  # noqa: E402

TINY = "sam2-test-tiny"
SIZE = 128  # model input; stride 16 -> 8x8 embedding, high-res levels 32x32 and 16x16
E, D = 8, 32  # Hiera embed_dim (doubles per stage), neck / decoder width
TINY_ARCH = ("configs/sam2.1/sam2.1_hiera_t.yaml", [
    f"++model.image_size={SIZE}",
    f"++model.image_encoder.trunk.embed_dim={E}", "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",  # not a stage-first (q-pool) block: those need windows
    "++model.image_encoder.trunk.window_spec=[8,4,4,2]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    f"++model.image_encoder.neck.backbone_channel_list=[{8 * E},{4 * E},{2 * E},{E}]",
    f"++model.image_encoder.neck.d_model={D}", f"++model.image_encoder.neck.position_encoding.num_pos_feats={D}",
    # the video-memory parts are built (and in the state_dict) but unused on images: shrink them
    f"++model.memory_attention.d_model={D}", "++model.memory_attention.num_layers=1",
    f"++model.memory_attention.layer.d_model={D}", "++model.memory_attention.layer.dim_feedforward=32",
    f"++model.memory_attention.layer.self_attention.embedding_dim={D}",
    "++model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    f"++model.memory_attention.layer.cross_attention.embedding_dim={D}",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16", "++model.memory_encoder.position_encoding.num_pos_feats=16",
    f"++model.memory_encoder.in_dim={D}", f"++model.memory_encoder.mask_downsampler.embed_dim={D}",
    f"++model.memory_encoder.fuser.layer.dim={D}",
])
KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
# everything off but the decoder: records = every (point, output) mask, sorted by predicted IoU
OFF = dict(points_per_side=2, crop_n_layers=0, pred_iou_thresh=0.0, stability_score_thresh=0.0,
           box_nms_thresh=1.0, min_mask_region_area=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared 2-core machine (see test_preprocess.py)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = build_sam2(TINY_ARCH[0], None, device="cpu", hydra_overrides_extra=list(TINY_ARCH[1]))
    p = tmp_path_factory.mktemp("sam2") / "sam2_tiny.pt"
    torch.save({"model": net.state_dict()}, p)
    return p


@pytest.fixture
def tiny(monkeypatch, ckpt):
    monkeypatch.setitem(sam2_levels.SAM2_ARCHS, TINY, TINY_ARCH)
    return ckpt


@pytest.fixture(scope="module")
def image():
    """96x80 RGB: a gradient with three flat rectangles (so masks differ between points)."""
    h, w = 80, 96
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)
    img[10:40, 8:50] = (230, 30, 30)
    img[45:75, 55:90] = (20, 200, 40)
    img[20:60, 60:70] = (250, 250, 0)
    return img


def reference_candidates(net, img, j):
    """Output ``j`` of SAM 2's public predictor at the 2x2 grid points, as records sorted by IoU."""
    h, w = img.shape[:2]
    pred = SAM2ImagePredictor(net)
    pred._bb_feat_sizes = [(SIZE // 4,) * 2, (SIZE // 8,) * 2, (SIZE // 16,) * 2]  # not the 1024-px sizes
    pred.set_image(img)
    out = []
    for y in (0.25 * h, 0.75 * h):       # points_per_side 2: cell centres, x fastest
        for x in (0.25 * w, 0.75 * w):
            logits, iou, _ = pred.predict(np.array([[x, y]]), np.array([1]), multimask_output=True,
                                          return_logits=True)
            lg = torch.from_numpy(logits[j])
            m = (lg > 0).numpy()
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())] \
                if len(xs) else [0, 0, 0, 0]
            stab = ((lg > 1).sum() / (lg > -1).sum()).item() if (lg > -1).any() else 1.0
            out.append(dict(segmentation=m, area=int(m.sum()), bbox=bbox, predicted_iou=float(iou[j]),
                            point_coords=[[x, y]], stability_score=stab, crop_box=[0, 0, w, h]))
    return sorted(out, key=lambda r: -r["predicted_iou"])


def assert_same(recs, ref):
    assert len(recs) == len(ref)
    for r, s in zip(recs, ref):
        assert set(r) == KEYS
        assert np.array_equal(r["segmentation"], s["segmentation"])
        assert (r["area"], r["bbox"], r["crop_box"]) == (s["area"], s["bbox"], s["crop_box"])
        assert np.allclose(r["point_coords"], s["point_coords"])
        assert r["predicted_iou"] == pytest.approx(s["predicted_iou"], abs=1e-5)
        assert r["stability_score"] == pytest.approx(s["stability_score"], abs=1e-6)


def test_levels_are_sam2_outputs(tiny, image):
    """s/m/l = SAM 2 output 0/1/2 at each grid point; default = all three (nothing filtered)."""
    gen = build_sam2_generator(TINY, tiny, "cpu", **OFF)
    levels = gen.generate_levels(image)
    assert list(levels) == list(LEVELS)
    net = gen.predictor.model.net
    refs = [reference_candidates(net, image, j) for j in range(3)]
    for lv, ref in zip(LEVELS[1:], refs):
        assert_same(levels[lv], ref)
    assert_same(levels["default"], sorted(sum(refs, []), key=lambda r: -r["predicted_iou"]))
    assert all(0.0 <= r["predicted_iou"] <= 1.0 for r in levels["default"])  # SAM 2.1: sigmoid IoU head
    # random weights still give distinct outputs per level (else the test could not tell them apart)
    segs = [np.stack([r["segmentation"] for r in levels[lv]]) for lv in LEVELS[1:]]
    assert not np.array_equal(segs[0], segs[1]) and not np.array_equal(segs[1], segs[2])
    # apply_postprocessing's dynamic multimask fallback only acts without multimask_output: no effect
    net.sam_mask_decoder.dynamic_multimask_via_stability = False
    same = gen.generate_levels(image)
    for lv in LEVELS:
        assert_same(same[lv], levels[lv])


def test_default_level_nms_by_hand(tiny, image):
    """With box NMS on, the default level is the greedy box-NMS of the 12 candidates (checked here)."""
    gen = build_sam2_generator(TINY, tiny, "cpu", **{**OFF, "box_nms_thresh": 0.3})
    got = gen.generate_levels(image)["default"]
    cands = sorted(sum((reference_candidates(gen.predictor.model.net, image, j) for j in range(3)), []),
                   key=lambda r: -r["predicted_iou"])

    def iou(a, b):  # XYWH boxes as continuous intervals (torchvision's box_iou on XYXY)
        ax0, ay0, aw, ah = a
        bx0, by0, bw, bh = b
        iw = max(0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
        ih = max(0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
        union = aw * ah + bw * bh - iw * ih
        return iw * ih / union if union > 0 else 0.0

    kept = []
    for c in cands:
        if all(iou(c["bbox"], k["bbox"]) <= 0.3 for k in kept):
            kept.append(c)
    assert 0 < len(kept) < len(cands)
    assert_same(got, kept)


def test_langsplat_settings_into_id_maps(tiny, image):
    """LangSplat's AMG (2x2 crops, filters on, thresholds lowered for random weights) -> masks_update
    -> id_maps: a valid ``_s`` map whose ids are rows of the four levels' features."""
    gen = build_sam2_generator(TINY, tiny, "cpu", points_per_side=8, pred_iou_thresh=0.0,
                               stability_score_thresh=0.0)
    seen = []
    set_image = gen.predictor.set_image
    gen.predictor.set_image = lambda crop: (seen.append(crop.shape[:2]), set_image(crop))[1]
    levels = gen.generate_levels(image)
    h, w = image.shape[:2]
    assert len(seen) == 5 and seen[0] == (h, w)  # the full image + LangSplat's 2x2 crops, one encoding each
    for lv in LEVELS:
        for r in levels[lv]:
            assert set(r) == KEYS and r["segmentation"].shape == (h, w) and r["segmentation"].dtype == bool
            assert r["area"] == int(r["segmentation"].sum()) and len(r["bbox"]) == 4 and len(r["crop_box"]) == 4
    kept = masks_update(levels, **LANGSPLAT_NMS)
    assert all(len(kept[lv]) > 0 for lv in LEVELS), {lv: len(v) for lv, v in kept.items()}
    seg, counts = id_maps(([r["segmentation"] for r in kept[lv]] for lv in LEVELS), h, w)
    assert seg.shape == (4, h, w) and counts == [len(kept[lv]) for lv in LEVELS]
    check_ids(torch.from_numpy(seg), sum(counts), "sam2")
    for k in range(4):  # level k's ids lie in its own block of rows
        ids = seg[k][seg[k] >= 0]
        assert ids.size and ids.min() >= sum(counts[:k]) and ids.max() < sum(counts[:k + 1])


def test_missing_and_wrong_weights(tiny, tmp_path):
    gone = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as e:
        load_sam2(TINY, gone, "cpu")
    assert str(gone) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        find_sam2_checkpoint("sam2.1_hiera_l", ckpt_dir=tmp_path)
    msg = str(e.value)
    assert "sam2.1_hiera_large.pt" in msg and "facebook/sam2.1-hiera-large" in msg and "\n" not in msg
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer  # a SAM 1 state_dict (its decoder's)
    sam1 = tmp_path / "sam_vit_b.pth"
    torch.save(MaskDecoder(transformer_dim=16, transformer=TwoWayTransformer(
        depth=1, embedding_dim=16, mlp_dim=32, num_heads=2)).state_dict(), sam1)
    with pytest.raises(WeightsError) as e:
        load_sam2(TINY, sam1, "cpu")
    assert str(sam1) in str(e.value) and "SAM 1" in str(e.value) and "\n" not in str(e.value)
    other = tmp_path / "other.pt"  # a SAM 2 file of another shape: the strict load names it
    torch.save({"model": {"no_mem_embed": torch.zeros(1, 1, 3)}}, other)
    with pytest.raises(WeightsError) as e:
        load_sam2(TINY, other, "cpu")
    assert str(other) in str(e.value) and "\n" not in str(e.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as e:
        load_sam2(TINY, junk, "cpu")
    assert str(junk) in str(e.value) and "\n" not in str(e.value)
