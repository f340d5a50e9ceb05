"""The query text encoder follows what made the scene's language features (scene/provenance.py)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from preprocess.synthetic import generate_scene
from scene.encoders import HashTextEncoder, OpenCLIPTextEncoder, TableTextEncoder, save_text_table
from scene.provenance import (DEFAULT_SOURCE, TextEncoderMismatchError, build_resolved_encoder,
                              feature_provenance, resolve_text_encoder, table_space_check)

# the LFS sha256 of laion/CLIP-ViT-B-16-laion2B-s34B-b88K's open_clip_pytorch_model.bin (HF blob page)
LAION_BIN_SHA = "1f16b1274ca25493b1f36225efe81d05f66a3f33c487acd1a07c5ba87920de6f"
TINY = {"n_views": 4, "width": 32, "height": 24, "n_points": 400, "n_labelled": 2}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic scene written by the current generator (synthetic.json has text_space)."""
    root = tmp_path_factory.mktemp("syn")
    return generate_scene(root, "s", 0, "default", TINY, progress=False, log=lambda *a: None)


def _unit_rows(rng, n, dim):
    a = rng.standard_normal((n, dim)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def make_features(scene: Path, dim=512, views=3, rows=20, seed=0, folder="language_features") -> Path:
    """``<scene>/<folder>/frame_0000i_{s,f}.npy`` like the LangSplat format (s: [4, H, W] ids)."""
    d = scene / folder
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(views):
        np.save(d / f"frame_{i:05d}_s.npy", np.full((4, 6, 8), -1, np.float32))
        np.save(d / f"frame_{i:05d}_f.npy", _unit_rows(rng, rows, dim))
    return d


def write_manifest(folder: Path, model="ViT-B-16", sha=LAION_BIN_SHA, file="open_clip_pytorch_model.bin",
                   dim=512, **clip_extra):
    """The manifest.json that ``python -m preprocess.run`` writes (the keys scene/provenance reads)."""
    man = {"tool": "python -m preprocess.run",
           "settings": {"sam": {"model_type": "vit_h", "file": "sam_vit_h_4b8939.pth", "sha256": "ab" * 32},
                        "clip": {"model": model, "file": file, "sha256": sha, "precision": "fp16", **clip_extra},
                        "generator": {}, "mask_nms": {}, "resolution": -1, "images": "images", "seed": 42},
           "format": {"_s.npy": "float32 [4, H, W] ids (default, s, m, l), -1 = no mask",
                      "_f.npy": f"float32 [M, {dim}] L2-normalised OpenCLIP image embeddings"},
           "images": 3, "complete": True}
    (folder / "manifest.json").write_text(json.dumps(man, indent=2))


@pytest.fixture
def ours(tmp_path):
    scene = tmp_path / "real"
    write_manifest(make_features(scene))
    return scene


# ---------------------------------------------------------------------------------------------
# provenance + auto
# ---------------------------------------------------------------------------------------------
def test_auto_on_our_manifest(ours, tmp_path):
    prov = feature_provenance(ours)
    assert prov["encoder"] == "openclip" and prov["source"] == "manifest.json"
    assert (prov["model"], prov["pretrained"], prov["dim"]) == ("ViT-B-16", "laion2b_s34b_b88k", 512)
    r = resolve_text_encoder("auto", ours, "language_features")
    assert (r["encoder"], r["model"], r["pretrained"], r["dim"]) == ("openclip", "ViT-B-16", "laion2b_s34b_b88k", 512)
    assert r["weights_sha256"] == LAION_BIN_SHA and r["provenance"] == prov
    json.dumps(r)  # the lead writes it into the run records
    # another model and tag recorded (tag from the manifest; dim from the _f rows, not the model name)
    other = tmp_path / "other"
    write_manifest(make_features(other, dim=768), model="ViT-L-14", sha="cd" * 32, dim=768, pretrained="datacomp_xl_s13b_b90k")
    r = resolve_text_encoder("auto", other)
    assert (r["encoder"], r["model"], r["pretrained"], r["dim"]) == ("openclip", "ViT-L-14", "datacomp_xl_s13b_b90k", 768)
    # unknown weights, no tag recorded: model kept, tag unknown, the sha256 identifies the weights
    unk = tmp_path / "unk"
    write_manifest(make_features(unk), sha="ef" * 32)
    r = resolve_text_encoder("auto", unk)
    assert r["model"] == "ViT-B-16" and r["pretrained"] is None and r["weights_sha256"] == "ef" * 32
    # the features folder is the one asked for: a manifest elsewhere does not count
    assert feature_provenance(ours, "other_features")["source"] == DEFAULT_SOURCE


def test_auto_on_synthetic_record(synth):
    info = json.loads((synth / "synthetic.json").read_text())
    assert info["text_space"]["encoder"] == "hash" and info["text_space"]["dim"] == 512
    prov = feature_provenance(synth)
    assert prov["encoder"] == "hash" and prov["source"] == "synthetic.json" and prov["dim"] == 512
    assert "note" not in prov
    r = resolve_text_encoder("auto", synth)
    assert (r["encoder"], r["dim"], r["model"]) == ("hash", 512, None)
    enc, rec = build_resolved_encoder(r)
    assert isinstance(enc, HashTextEncoder) and enc.dim == 512 and enc.shared == info["text_space"]["shared"]
    # the encoder really is the scene's: its vectors equal the generator's table
    tf = json.loads((synth / "text_features.json").read_text())
    k = next(iter(tf))
    assert np.allclose(enc.encode([k])[0].numpy(), tf[k], atol=1e-6)


def test_auto_on_old_synthetic_scene_without_text_space(tmp_path):
    root = tmp_path / "data"
    scene = generate_scene(root, "old", 1, "default", TINY, progress=False, log=lambda *a: None)
    info = json.loads((scene / "synthetic.json").read_text())
    del info["text_space"]
    (scene / "synthetic.json").write_text(json.dumps(info))
    prov = feature_provenance(scene)
    assert prov["encoder"] == "hash" and prov["source"] == "synthetic.json" and prov["dim"] == 512
    assert "no text_space" in prov["note"]
    assert resolve_text_encoder("auto", scene)["encoder"] == "hash"
    # the regeneration logic still takes it for the same scene (no SceneExistsError, nothing rewritten)
    msgs = []
    generate_scene(root, "old", 1, "default", TINY, progress=False, log=msgs.append)
    assert "up to date" in msgs[0]
    assert "text_space" not in json.loads((scene / "synthetic.json").read_text())


def test_auto_on_bare_folder(tmp_path):
    scene = tmp_path / "figurines"
    make_features(scene)
    prov = feature_provenance(scene, "language_features")
    assert prov["source"] == DEFAULT_SOURCE and prov["source"].startswith("default (no record")
    assert (prov["encoder"], prov["model"], prov["pretrained"], prov["dim"]) == \
        ("openclip", "ViT-B-16", "laion2b_s34b_b88k", 512)
    r = resolve_text_encoder("auto", scene)
    assert (r["encoder"], r["model"], r["pretrained"], r["weights_sha256"]) == \
        ("openclip", "ViT-B-16", "laion2b_s34b_b88k", None)
    # no record and rows of another width: no guess
    odd = tmp_path / "odd"
    make_features(odd, dim=64)
    assert feature_provenance(odd)["model"] is None
    with pytest.raises(TextEncoderMismatchError, match="cannot tell which encoder"):
        resolve_text_encoder("auto", odd)


def test_bad_records(tmp_path):
    scene = tmp_path / "x"
    d = make_features(scene)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: cannot read"):
        feature_provenance(scene)
    (d / "manifest.json").write_text(json.dumps({"tool": "something else"}))
    with pytest.raises(ValueError, match="no settings.clip.model"):
        feature_provenance(scene)
    with pytest.raises(ValueError, match="unknown; choose one of auto, hash, table, openclip"):
        resolve_text_encoder("clip", tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# impossible explicit choices
# ---------------------------------------------------------------------------------------------
def test_hash_on_openclip_features_refused(ours, tmp_path):
    msg = (f"query.text_encoder=hash but {ours / 'language_features'} were made by OpenCLIP ViT-B-16 "
           f"laion2b_s34b_b88k (manifest.json): use auto or openclip")
    with pytest.raises(TextEncoderMismatchError, match=re.escape(msg)):
        resolve_text_encoder("hash", ours)
    bare = tmp_path / "bare"
    make_features(bare)
    with pytest.raises(TextEncoderMismatchError, match=r"hash but .* OpenCLIP ViT-B-16 laion2b_s34b_b88k "
                                                       r"\(no record: assumed LangSplat's default\)"):
        resolve_text_encoder("hash", bare)


def test_openclip_on_hash_features_refused(synth):
    msg = (f"query.text_encoder=openclip but {synth / 'language_features'} were made by the synthetic "
           f"512-D hash encoder (synthetic.json): use auto or hash")
    with pytest.raises(TextEncoderMismatchError, match=re.escape(msg)):
        resolve_text_encoder("openclip", synth)
    with pytest.raises(TextEncoderMismatchError, match="openclip but .*hash encoder"):
        resolve_text_encoder("openclip", synth, model="ViT-B-16")


def test_openclip_model_or_tag_differing_from_manifest_refused(ours):
    with pytest.raises(TextEncoderMismatchError,
                       match=r"openclip with model ViT-L-14 but .* made by OpenCLIP ViT-B-16 laion2b_s34b_b88k "
                             r"\(manifest.json\): use auto, or openclip with model ViT-B-16"):
        resolve_text_encoder("openclip", ours, model="ViT-L-14")
    with pytest.raises(TextEncoderMismatchError,
                       match=r"openclip with pretrained openai but .* ViT-B-16 laion2b_s34b_b88k"):
        resolve_text_encoder("openclip", ours, pretrained="openai")
    # the same model named explicitly is fine
    r = resolve_text_encoder("openclip", ours, model="ViT-B-16", pretrained="laion2b_s34b_b88k")
    assert (r["encoder"], r["model"], r["weights_sha256"]) == ("openclip", "ViT-B-16", LAION_BIN_SHA)


def test_openclip_model_of_other_dim_on_unrecorded_features_refused(tmp_path):
    pytest.importorskip("open_clip")
    bare = tmp_path / "bare"
    make_features(bare)
    with pytest.raises(TextEncoderMismatchError, match=r"model ViT-L-14 \(768-D embeddings; the features are 512-D\)"):
        resolve_text_encoder("openclip", bare, model="ViT-L-14")


def test_table_of_other_dim_refused(ours, tmp_path):
    t = save_text_table(tmp_path / "t768.json", dict(zip(["a", "b", "object"], _unit_rows(np.random.default_rng(0), 3, 768))))
    with pytest.raises(TextEncoderMismatchError,
                       match=rf"table: {re.escape(str(t))} holds 768-D vectors but .*language_features were made by "
                             rf"OpenCLIP ViT-B-16 laion2b_s34b_b88k \(manifest.json\) and are 512-D: use auto, or a "
                             rf"table of 512-D vectors"):
        resolve_text_encoder("table", ours, "language_features", str(t))


def test_table_space_check_accepts_own_table_refuses_random(synth, tmp_path):
    r = resolve_text_encoder("table", synth)  # default path: <scene>/text_features.json
    chk = r["space_check"]
    json.dumps(r)
    assert r["encoder"] == "table" and r["dim"] == 512 and r["path"] == str(synth / "text_features.json")
    assert chk["in_space"] is True and chk["p_value"] < 1e-8 and chk["matches"] >= 6 and chk["views"] == 4
    enc, _ = build_resolved_encoder(r)
    assert isinstance(enc, TableTextEncoder)
    # a table of random vectors with the same phrases and dim
    phrases = list(json.loads((synth / "text_features.json").read_text()))
    rand = save_text_table(tmp_path / "rand.json", dict(zip(phrases, _unit_rows(np.random.default_rng(3), len(phrases), 512))))
    with pytest.raises(TextEncoderMismatchError,
                       match=r"table: the vectors of .*rand.json are not in the space of the features, .* were made "
                             r"by the synthetic 512-D hash encoder \(synthetic.json\): only \d+ of \d+ phrases"):
        resolve_text_encoder("table", synth, "language_features", str(rand))
    # a table from "another model" of the same dim (a hash encoder with other word vectors)
    class Other(HashTextEncoder):
        def word_vector(self, word):
            return super().word_vector("other model:" + word)

    other = save_text_table(tmp_path / "other.json", dict(zip(phrases, Other().encode_numpy(phrases))))
    with pytest.raises(TextEncoderMismatchError, match="not in the space"):
        resolve_text_encoder("table", synth, text_table=str(other))
    # the own table diluted by many phrases absent from the scene is still accepted
    own = json.loads((synth / "text_features.json").read_text())
    big = dict(own, **{f"w{i}": v for i, v in enumerate(_unit_rows(np.random.default_rng(4), 150, 512))})
    big_path = save_text_table(tmp_path / "big.json", big)
    assert resolve_text_encoder("table", synth, text_table=str(big_path))["space_check"]["in_space"] is True
    assert resolve_text_encoder("table", synth, text_table=str(rand), check_space=False)["space_check"] is None


def test_table_space_check_null_rate():
    """Random tables against random-but-anisotropic rows are accepted at most at the design rate."""
    rng = np.random.default_rng(1)
    gap = _unit_rows(rng, 1, 256)[0]
    rows = 0.3 * _unit_rows(rng, 300, 256) + 0.95 * gap
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    accepted = sum(bool(table_space_check(_unit_rows(rng, 10, 256), rows)["in_space"]) for _ in range(40))
    assert accepted == 0
    # aligned with some rows (noisy copies): accepted
    near = rows[:10] + 0.03 * _unit_rows(rng, 10, 256)
    assert table_space_check(near, rows)["in_space"] is True
    # a single phrase cannot be decided
    assert table_space_check(near[:1], rows)["in_space"] is None


# ---------------------------------------------------------------------------------------------
# building the resolved openclip encoder: the weights must be the manifest's
# ---------------------------------------------------------------------------------------------
def test_build_resolved_openclip_checks_weights(tmp_path):
    pytest.importorskip("open_clip")
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    w = ckpts / "open_clip_pytorch_model.bin"
    w.write_bytes(b"not real weights, hashed only: the model loads on the first encode")
    from scene.foundation import sha256_file

    scene = tmp_path / "real"
    write_manifest(make_features(scene), sha=sha256_file(w))
    r = resolve_text_encoder("auto", scene)
    enc, rec = build_resolved_encoder(r, ckpt_dir=ckpts, device="cpu")
    assert isinstance(enc, OpenCLIPTextEncoder) and enc.model_name == "ViT-B-16" and enc.dim == 512
    assert rec["weights_sha256_used"] == sha256_file(w) and rec["encoder"] == "openclip"
    # another file than the manifest's
    w.write_bytes(b"other weights")
    with pytest.raises(TextEncoderMismatchError, match=r"OpenCLIP weights .*open_clip_pytorch_model.bin .* are not "
                                                       r"the ones that made .*language_features"):
        build_resolved_encoder(r, ckpt_dir=ckpts, device="cpu")
    # no record (default provenance): any file is taken
    bare = tmp_path / "bare"
    make_features(bare)
    enc, rec = build_resolved_encoder(resolve_text_encoder("auto", bare), ckpt_dir=ckpts, device="cpu")
    assert rec["pretrained"] == "laion2b_s34b_b88k" and enc.pretrained == "laion2b_s34b_b88k"
