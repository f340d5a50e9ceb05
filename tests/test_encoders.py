"""Text encoders: hash determinism and geometry, table round trip and errors, registry."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scene.grounding import CANONICAL_NEGATIVES
from scene.encoders import (HashTextEncoder, TableTextEncoder, TextEncoder,
                            UnknownPhraseError, build_text_encoder, save_text_table, tokenize)


def test_hash_deterministic_across_processes():
    enc = HashTextEncoder()
    a = enc.encode(["red apple", "teapot"])
    b = HashTextEncoder().encode(["red apple", "teapot"])
    assert a.dtype == torch.float32 and a.shape == (2, 512)
    assert torch.equal(a, b)
    # a fresh interpreter (different PYTHONHASHSEED) gives the same bytes
    code = ("from scene.encoders import HashTextEncoder;import sys;"
            "sys.stdout.write(HashTextEncoder().encode(['red apple']).numpy().tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "",
                              "PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout
    assert bytes.fromhex(out) == a[0].numpy().tobytes()


def test_hash_unit_norm_and_similarity_structure():
    enc = HashTextEncoder()
    e = enc.encode(["red apple", "green apple", "teapot", "Red  APPLE!", "a red apple", "apple red"])
    assert torch.allclose(e.norm(dim=1), torch.ones(6), atol=1e-6)
    ra, ga, tp = e[0], e[1], e[2]
    assert float(ra @ ga) > float(ra @ tp) + 0.3
    # closed form: word vectors nearly orthogonal, shared component 0.2 -> (1/2 + 0.04) / 1.04
    assert abs(float(ra @ ga) - 0.54 / 1.04) < 0.1
    assert abs(float(ra @ tp) - 0.04 / 1.04) < 0.1
    assert torch.allclose(e[0], e[3]) and torch.allclose(e[0], e[4]) and torch.allclose(e[0], e[5])
    # the phrase vector is the normalised word sum plus the shared part, computed by hand
    w = enc.word_vector
    s = w("red") + w("apple")
    s = s / np.linalg.norm(s) + 0.2 * w("\x00phrase")
    assert np.allclose(e[0].numpy(), s / np.linalg.norm(s), atol=1e-6)
    assert tokenize("tea in a glass") == ["tea", "glass"] and tokenize("of the") == ["of", "the"]
    assert isinstance(enc, TextEncoder)


def test_hash_bad_input():
    enc = HashTextEncoder()
    with pytest.raises(ValueError, match="list of phrases"):
        enc.encode("red apple")
    with pytest.raises(ValueError, match="no words"):
        enc.encode(["  !! "])
    with pytest.raises(ValueError, match="dim"):
        HashTextEncoder(dim=0)


def test_table_round_trip_json_and_pt(tmp_path):
    enc = HashTextEncoder()
    phrases = ["red apple", "Stainless steel pots"] + list(CANONICAL_NEGATIVES)
    vecs = enc.encode_numpy(phrases)
    p = save_text_table(tmp_path / "text_features.json", {k: 3.0 * v for k, v in zip(phrases, vecs)})
    tab = build_text_encoder("table", path=p)
    assert tab.dim == 512 and tab.phrases == phrases
    got = tab.encode(["texture", "red apple", "stainless steel pots"])
    assert got.dtype == torch.float32
    assert np.allclose(got.numpy(), vecs[[5, 0, 1]], atol=1e-7)   # renormalised, case-insensitive
    torch.save({k: torch.tensor(v) for k, v in zip(phrases, vecs)}, tmp_path / "t.pt")
    assert torch.allclose(TableTextEncoder(tmp_path / "t.pt").encode(["object"]), enc.encode(["object"]))
    assert tab.encode([]).shape == (0, 512)


def test_table_errors(tmp_path):
    p = save_text_table(tmp_path / "tf.json", {"red apple": [1.0, 0.0], "teapot": [0.0, 2.0]})
    tab = TableTextEncoder(p)
    with pytest.raises(KeyError) as ei:
        tab.encode(["blue teapot"])
    msg = str(ei.value)
    assert isinstance(ei.value, UnknownPhraseError)
    assert "'blue teapot'" in msg and "'red apple'" in msg and "'teapot'" in msg and str(p) in msg
    with pytest.raises(FileNotFoundError, match="missing.json"):
        TableTextEncoder(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*cannot parse"):
        TableTextEncoder(bad)
    bad.write_text(json.dumps({"a": [1.0, 2.0], "b": [1.0]}))
    with pytest.raises(ValueError, match="'b' has length 1"):
        TableTextEncoder(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="mapping"):
        TableTextEncoder(bad)


def test_registry(tmp_path):
    assert isinstance(build_text_encoder("hash"), HashTextEncoder)
    assert build_text_encoder("hash", dim=64).encode(["x"]).shape == (1, 64)
    # the real encoder loads local weights only: an empty checkpoint folder is a clear error on first use
    with pytest.raises(FileNotFoundError, match="open_clip"):
        build_text_encoder("openclip", ckpt_dir=tmp_path).encode(["red apple"])
    with pytest.raises(ValueError, match="unknown text encoder 'clip'"):
        build_text_encoder("clip")
    with pytest.raises(ValueError, match="needs path"):
        build_text_encoder("table")


def test_openclip_model_and_pretrained(tmp_path, monkeypatch):
    """``pretrained`` labels the local weights; a known published file must be the asked model + tag.
    Construction only hashes the file (the model loads on the first encode), so fake bytes do here."""
    pytest.importorskip("open_clip")
    import scene.encoders as encoders
    from scene.foundation import sha256_file

    w = tmp_path / "open_clip_model.safetensors"
    w.write_bytes(b"pretend these are the laion weights")
    enc = build_text_encoder("openclip", ckpt_dir=tmp_path, model="ViT-B-16", device="cpu")
    assert enc.pretrained is None and encoders.known_openclip_weights(enc.sha256) is None  # unknown file
    enc = build_text_encoder("openclip", ckpt_dir=tmp_path, model="ViT-B-16", pretrained="my_tag", device="cpu")
    assert enc.pretrained == "my_tag"
    # published sha256s are known (the real ViT-B-16 laion2b_s34b_b88k files)
    assert encoders.known_openclip_weights(
        "3f25d29d3cc74e1d25d47e0593b4dd0864ced1e9b4d8e486a247ca4502f227f1") == ("ViT-B-16", "laion2b_s34b_b88k")
    monkeypatch.setitem(encoders.EXTRA_OPENCLIP_WEIGHTS, sha256_file(w), ("ViT-B-16", "laion2b_s34b_b88k"))
    enc = build_text_encoder("openclip", ckpt_dir=tmp_path, device="cpu")
    assert enc.pretrained == "laion2b_s34b_b88k" and enc.model_name == "ViT-B-16"
    assert build_text_encoder("openclip", ckpt_dir=tmp_path, pretrained="laion2b_s34b_b88k",
                              device="cpu").pretrained == "laion2b_s34b_b88k"
    with pytest.raises(ValueError, match=r"is the OpenCLIP ViT-B-16 laion2b_s34b_b88k file .*not ViT-B-16 openai"):
        build_text_encoder("openclip", ckpt_dir=tmp_path, pretrained="openai", device="cpu")
    with pytest.raises(ValueError, match=r"is the OpenCLIP ViT-B-16 laion2b_s34b_b88k file .*not ViT-L-14"):
        build_text_encoder("openclip", ckpt_dir=tmp_path, model="ViT-L-14", device="cpu")
    with pytest.raises(ValueError, match="pretrained must be a non-empty tag"):
        build_text_encoder("openclip", ckpt_dir=tmp_path, pretrained="", device="cpu")
