"""SigLIP beside OpenCLIP (preprocess/models.py, scene/foundation.py LANGUAGE_MODELS): a tiny random-weight
SigLIP-style open_clip model (sigmoid logit bias, bidirectional text tower pooled at the last token, its
own Hugging Face tokenizer in local files), checked against hand-made forwards; a scene preprocessed
with it is queried with its text tower and refused with another model's; and a 768-D feature space
goes through the instance field, the mapping and the query."""
from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

import preprocess.run as prun
from preprocess.models import build_image_encoder
from scene.encoders import OpenCLIPTextEncoder
from scene.foundation import SIGLIP_MEAN_STD, image_mean_std, is_siglip, load_openclip
from scene.provenance import TextEncoderMismatchError, build_resolved_encoder, feature_provenance, resolve_text_encoder
from test_preprocess import TINY_CLIP, ckpts, fake_sam, make_scene, tiny  # noqa: F401  (fixtures)

TINY_SIGLIP = "cos3d-test-tiny-siglip"
WORDS = ["<pad>", "</s>", "<unk>", "red", "apple", "teapot", "blue", "a", "photo", "of", "object", "things",
         "stuff", "texture", "green", "chair"]
TINY_SIGLIP_CFG = {
    "embed_dim": 96, "init_logit_bias": -10, "custom_text": True,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": len(WORDS), "hf_tokenizer_name": "local-files-only",
                 "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2, "layers": 1,
                 "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}}


def write_tokenizer(folder) -> None:
    """A word-level Hugging Face tokenizer (tokenizer.json + config) over ``WORDS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(folder))


@pytest.fixture(scope="module")
def siglip(ckpts, tmp_path_factory):  # noqa: F811
    """``<ckpts>/<TINY_SIGLIP>/``: the weights and the tokenizer, as a snapshot of a Hugging Face repo."""
    pytest.importorskip("transformers")
    cfg_dir = tmp_path_factory.mktemp("siglip_cfg")
    (cfg_dir / f"{TINY_SIGLIP}.json").write_text(json.dumps(TINY_SIGLIP_CFG))
    open_clip.add_model_config(cfg_dir)
    folder = ckpts / TINY_SIGLIP
    folder.mkdir(exist_ok=True)
    torch.manual_seed(1)
    torch.save(open_clip.create_model(TINY_SIGLIP).state_dict(), folder / "open_clip_pytorch_model.bin")
    write_tokenizer(folder)
    return folder


def test_siglip_text_tower_reads_its_local_tokenizer(siglip, ckpts, tmp_path):  # noqa: F811
    from transformers import AutoTokenizer

    enc = OpenCLIPTextEncoder(ckpt_dir=ckpts, model=TINY_SIGLIP, device="cpu")
    assert enc.weights_path == siglip / "open_clip_pytorch_model.bin" and enc.dim == 96
    got = enc.encode(["red apple", "Blue teapot."])
    # reference: transformers' own tokenizer of the folder, padded to the context, the model by hand
    ids = AutoTokenizer.from_pretrained(str(siglip))(["red apple", "blue teapot"], padding="max_length",
                                                      max_length=16, truncation=True, return_tensors="pt").input_ids
    assert ids[0, :2].tolist() == [WORDS.index("red"), WORDS.index("apple")]
    model = load_openclip(TINY_SIGLIP, siglip / "open_clip_pytorch_model.bin", "cpu")
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)   # canonicalize: lower case, no punctuation

    bare = tmp_path / "bare" / TINY_SIGLIP                      # the weights without the tokenizer files
    bare.mkdir(parents=True)
    (bare / "open_clip_pytorch_model.bin").write_bytes((siglip / "open_clip_pytorch_model.bin").read_bytes())
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        OpenCLIPTextEncoder(ckpt_dir=tmp_path / "bare", model=TINY_SIGLIP, device="cpu").encode(["red apple"])


def test_siglip_image_tower_uses_its_normalisation(siglip):
    assert is_siglip(TINY_SIGLIP) and not is_siglip(TINY_CLIP) and not is_siglip("ViT-B-16")
    assert is_siglip("ViT-B-16-SigLIP") and image_mean_std(TINY_SIGLIP) == SIGLIP_MEAN_STD
    enc = build_image_encoder(TINY_SIGLIP, siglip / "open_clip_pytorch_model.bin", "cpu", "fp32", 4)
    crops = np.random.default_rng(0).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        want = torch.nn.functional.normalize(enc.model.encode_image((x - 0.5) / 0.5), dim=-1)
    torch.testing.assert_close(enc.encode(crops), want, atol=1e-5, rtol=0)
    assert enc.dim == 96


def test_siglip_scene_is_queried_with_siglip_only(tmp_path, tiny, fake_sam, siglip, ckpts):  # noqa: F811
    scene = make_scene(tmp_path / "scene")
    args = [a if a != TINY_CLIP else TINY_SIGLIP for a in tiny]          # --clip_model <tiny siglip>
    assert prun.main(["-s", str(scene), *args, "--language", "siglip", "--workers", "2"]) == 0
    man = json.loads((scene / "language_features" / "manifest.json").read_text())
    assert man["settings"]["clip"]["model"] == TINY_SIGLIP and man["runtime"]["image_mean_std"][0] == [0.5] * 3
    f = np.load(scene / "language_features" / "frame_00001_f.npy")
    assert f.shape[1] == 96 and np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    prov = feature_provenance(scene)
    assert (prov["model"], prov["dim"]) == (TINY_SIGLIP, 96)
    res = resolve_text_encoder("auto", scene)
    enc, rec = build_resolved_encoder(res, ckpt_dir=ckpts, device="cpu")
    assert rec["weights_sha256_used"] == man["settings"]["clip"]["sha256"] and enc.encode(["red apple"]).shape == (1, 96)
    with pytest.raises(TextEncoderMismatchError, match=TINY_CLIP):    # model B's text tower: refused
        resolve_text_encoder("openclip", scene, model=TINY_CLIP)


def test_streamed_images_keep_order_and_errors(tmp_path):
    scene = make_scene(tmp_path / "s", n=5)
    paths = sorted((scene / "images").iterdir())
    for workers in (0, 1, 3):
        got = list(prun.stream_images(paths, -1, workers))
        assert [p for p, _ in got] == paths
        assert all(np.array_equal(img, prun.read_image(p)) for p, img in got)
    (scene / "images" / "frame_00003.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="frame_00003.png: cannot decode"):
        list(prun.stream_images(paths, -1, 2))


@pytest.mark.slow
def test_a_768_d_feature_space_through_training_and_the_query(tmp_path):
    """SigLIP's width end to end on a generated scene whose "CLIP" space is 768-D."""
    import query
    from scene.selections import read_index
    from scene_factory import TINY_SCENE, train_tiny_run

    run = train_tiny_run(tmp_path, "wide", scene={**TINY_SCENE, "text_dim": 768})
    from scene.language_field import from_state
    lang = from_state(torch.load(run / "mapping" / "language_field.pt", map_location="cpu", weights_only=True))
    assert lang.shape[-1] == 768
    cats = json.loads((tmp_path / "data" / "wide" / "queries.json").read_text())["queries"]
    assert query.main(["-m", str(run), "--query", cats[0]]) == 0
    assert read_index(run)["queries"][cats[0]]["n_selected"] > 0
