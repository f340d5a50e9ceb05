"""Image queries: ``query.py --image crop.png [--box x0 y0 x1 y1]`` (preprocess/image_prompt.py, docs/method.md §5.7).

* synthetic features: a crop of object k from a view that is not a labelled frame selects object k
  (IoU of the rendered selection with k's ground-truth masks in every labelled frame, through the
  unchanged render.py); the box comes from the ground-truth object-id buffer of that view;
* the bad-input lines on the command line, nothing recorded;
* OpenCLIP features (a tiny random-weight OpenCLIP model, as tests/test_preprocess.py): the vector is
  the image tower's output on the box padded to a centred square and resized to 224, computed here.
"""
import json

import cv2
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import query
import render
from arguments import Config
from preprocess.image_prompt import embed_image_prompt
from preprocess.synthetic import build_scene, make_config
from preprocess.synthetic.render import id_buffers
from scene.lerf_eval import iou
from scene.lerf_labels import load_binary, read_gt
from scene_factory import TINY_SCENE, one_line_error, train_tiny_run  # tests/ is on the pythonpath (pyproject.toml)

# the tiny trained generated scene of tests/scene_factory.py (~15-20 s on 2 cores)
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_query")
    run = train_tiny_run(root, "p")
    layout, cams = build_scene(0, make_config("clean", TINY_SCENE))
    return root, run, read_gt(root / "data" / "label" / "p" / "gt"), layout, cams


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_a_crop_of_an_object_selects_that_object(trained, capsys):
    root, run, gt, layout, cams = trained
    names = [o.name for o in layout.objects]
    view = next(c for c in cams if c.name not in gt)                  # not a labelled frame
    _, obj, _, _ = id_buffers(layout, view)
    image_file = root / "data" / "p" / "images" / f"{view.name}.png"
    image = np.asarray(Image.open(image_file).convert("RGB"))
    labelled = {c for f in gt.values() for c in f}
    asked = {}
    for k, name in enumerate(names):
        if name not in labelled or (obj == k).sum() < 20:
            continue
        x0, y0, x1, y1 = _bbox(obj == k)
        inside = obj[y0:y1, x0:x1]
        assert np.bincount(inside[inside >= 0], minlength=len(names)).argmax() == k   # k covers most of its box
        if not asked:                                 # the first one as a crop file, the others as a --box
            crop = root / f"crop_{k}.png"
            Image.fromarray(image[y0:y1, x0:x1]).save(crop)
            argv = ["--image", str(crop)]
        else:
            argv = ["--image", str(image_file), "--box", str(x0), str(y0), str(x1), str(y1)]
        assert query.main(["-m", str(run), *argv, "--name", name]) == 0
        asked[name] = (argv, [x0, y0, x1, y1])
    assert len(asked) >= 2, asked
    assert render.main(["-m", str(run)]) == 0
    ious = {(f, c): iou(load_binary(run / "renders" / f / f"{c}.png"), gt[f][c])
            for f in gt for c in gt[f] if c in asked}
    with capsys.disabled():
        print(f"\nimage prompts from {view.name}, IoU with the object's gt: "
              f"{ {k: round(v, 3) for k, v in sorted(ious.items())} }")
    assert ious and min(ious.values()) >= 0.6, ious
    index = json.loads((run / "queries" / "index.json").read_text())["queries"]
    for name, (argv, box) in asked.items():
        rec = index[name]
        assert rec["prompt"] == {"image": argv[1], "box": [int(v) for v in argv[3:]] or None}
        assert rec["mode"] == "collaborative" and rec["n_selected"] > 0
        enc = rec["image_encoder"]
        assert (enc["encoder"], enc["view"], enc["object"], enc["box_in_view"]) == ("synthetic", view.name, name, box)



def test_bad_image_prompts_on_the_command_line(trained, capsys):
    root, run, gt, layout, cams = trained
    view = root / "data" / "p" / "images" / f"{cams[0].name}.png"
    index = run / "queries" / "index.json"
    before = index.read_bytes() if index.exists() else None
    (root / "not_an_image.png").write_text("hello")
    noise = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "foreign.png")
    _, obj, _, _ = id_buffers(layout, cams[0])
    ys, xs = np.nonzero(obj < 0)
    bg = [str(int(xs[0])), str(int(ys[0])), str(int(xs[0]) + 1), str(int(ys[0]) + 1)]   # one background pixel
    cases = [(["--image", str(root / "nope.png")], ["nope.png: image not found"]),
             (["--image", str(root / "not_an_image.png")], ["not_an_image.png: not a readable image"]),
             (["--image", str(view), "--box", "5", "5", "5", "9"], ["--box 5 5 5 9 has zero area"]),
             (["--image", str(view), "--box", "0", "0", "65", "10"], ["outside", "64x48 pixels"]),
             (["--image", str(view), "--box", "-1", "0", "6", "10"], ["outside"]),
             (["--box", "0", "0", "6", "10"], ["--box goes with --image"]),
             (["--image", str(view), "--query", "apple"], ["not several"]),
             (["--image", str(view), "--point", "3", "4", "--view", cams[0].name], ["not several"]),
             (["--image", str(root / "foreign.png")], ["matches no view", "crops of their own views"]),
             (["--image", str(view), "--box", *bg], ["shows only background"])]
    for argv, needles in cases:
        assert query.main(["-m", str(run), *argv]) == 2, argv
        one_line_error(capsys, *needles)
    after = index.read_bytes() if index.exists() else None
    assert after == before                                     # nothing recorded


# ---------------------------------------------------------------------------------------------
# OpenCLIP features: a tiny random-weight model (tests/test_preprocess.py's), a scene folder with a manifest
TINY_CLIP = "cos3d-test-tiny-vit"
TINY_CLIP_CFG = {"embed_dim": 512,
                 "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    cfg = tmp_path_factory.mktemp("clip_cfg")
    (cfg / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(TINY_CLIP).state_dict(), d / "open_clip_pytorch_model.bin")
    return d


def test_openclip_image_vector_is_the_towers_output_on_the_padded_box(ckpts, tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("CKPT_DIR", str(ckpts))
    weights = ckpts / "open_clip_pytorch_model.bin"
    feats = tmp_path / "scene" / "language_features"
    feats.mkdir(parents=True)
    np.save(feats / "frame_00001_f.npy", np.eye(1, 512, dtype=np.float32))
    (feats / "manifest.json").write_text(json.dumps({"settings": {"clip": {
        "model": TINY_CLIP, "file": weights.name, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}}))
    cfg = Config()
    cfg.data.source_path = str(tmp_path / "scene")
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    ref_model = open_clip.create_model(TINY_CLIP, pretrained=str(weights)).eval()
    for box in ((5, 3, 25, 38), (10, 20, 50, 30), (0, 0, 60, 40)):       # tall, wide, the whole image
        vec, info = embed_image_prompt(cfg, image, box, "crop.png", device="cpu")
        x0, y0, x1, y1 = box
        h, w, side = y1 - y0, x1 - x0, max(y1 - y0, x1 - x0)
        square = np.zeros((side, side, 3), np.uint8)
        square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = image[y0:y1, x0:x1]
        x = torch.from_numpy(cv2.resize(square, (224, 224))).permute(2, 0, 1)[None].float() / 255
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        with torch.no_grad():
            ref = ref_model.encode_image((x - mean) / std)
        ref = ref / ref.norm(dim=-1, keepdim=True)
        assert vec.shape == (1, 512) and vec.dtype == torch.float32
        assert torch.allclose(vec, ref, atol=1e-5), float((vec - ref).abs().max())
        assert (info["encoder"], info["model"]) == ("openclip", TINY_CLIP)
