"""Text encoders behind one narrow interface (docs/method.md §5.1).

``encode(texts)`` maps a list of Q phrases to a float32 tensor ``[Q, dim]`` whose rows are
L2-normalised (on the CPU; callers move it to their device). Three kinds, chosen by name through
:func:`build_text_encoder`:

* ``"hash"``: :class:`HashTextEncoder`, a deterministic bag-of-words embedding that needs no
  weights. Each lower-cased word maps to a fixed pseudo-random unit vector seeded by a stable
  hash of the word (blake2b, not Python's salted ``hash()``); a phrase is the normalised sum of
  its word vectors plus a small component shared by every phrase. Phrases sharing words are
  therefore similar ("red apple" vs "green apple": ~0.5) and unrelated phrases are nearly
  orthogonal (~0.04). The synthetic scenes (``preprocess.synthetic``) build their per-mask
  "CLIP" vectors with this encoder, so queries and features live in one space.
* ``"table"``: :class:`TableTextEncoder`, precomputed vectors looked up by phrase from a JSON
  file ``{phrase: [floats]}`` (the shape of OpenGaussian's ``text_features.json``) or a ``.pt``
  file holding a dict ``{phrase: tensor/list}``.
* ``"openclip"``: :class:`OpenCLIPTextEncoder`, the real OpenCLIP text tower (default ViT-B-16
  ``laion2b_s34b_b88k``; any ``model`` / ``pretrained`` tag with a local weights file), weights from a
  local file in ``ckpt_dir`` (default ``$CKPT_DIR`` or ``<repo>/ckpts``; see ``ckpts/README.md``).
  Phrases are encoded once per object (dict cache) and optionally cached on disk (``cache_path``, a
  ``.pt`` keyed by model, precision and the weights' sha256).

Which encoder matches a scene's language features is decided by ``scene.provenance``
(``resolve_text_encoder``), from the record of what made them.

Image encoders (``ImageEncoder``: ``encode(crops uint8 [M, 224, 224, 3]) -> float32 [M, dim]``)
live with the preprocessing: ``preprocess.clip_features.OpenCLIPImageEncoder``.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Protocol, Union, runtime_checkable

import numpy as np
import torch

from .atomic import torch_save


@runtime_checkable
class TextEncoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``texts``: Q phrases -> float32 ``[Q, dim]``, rows L2-normalised."""
        ...


@runtime_checkable
class ImageEncoder(Protocol):
    dim: int

    def encode(self, crops) -> torch.Tensor:
        """``crops``: uint8 ``[M, 224, 224, 3]`` RGB -> float32 ``[M, dim]``, rows L2-normalised."""
        ...


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("encode() takes a list of phrases, got a single string "
                         f"{texts!r}; wrap it in a list")
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise ValueError(f"encode(): every phrase must be a str, got {type(t).__name__} {t!r}")
    return texts


# ---------------------------------------------------------------------------------------------
# hash encoder
# ---------------------------------------------------------------------------------------------
_WORD_RE = re.compile(r"[a-z0-9]+")
# Function words carry no object identity; they are dropped unless the phrase has nothing else.
_STOPWORDS = frozenset({"a", "an", "the", "of", "in", "on", "with", "and", "to", "for"})
_SHARED_TOKEN = "\x00phrase"  # seeds the component shared by all phrases (not a reachable word)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words of ``text`` without stopwords (kept if nothing else)."""
    words = _WORD_RE.findall(text.lower())
    content = [w for w in words if w not in _STOPWORDS]
    return content or words


class HashTextEncoder:
    """Deterministic bag-of-words text encoder (no weights).

    word vector  u(w) = g / |g|,  g ~ N(0, I_dim) from ``numpy.random.default_rng`` seeded with
                 the first 8 bytes of ``blake2b(w)`` (stable across runs, platforms, processes);
    phrase       e(p) = normalise( normalise(sum_{w in tokenize(p)} u(w)) + shared * u(<shared>) ).

    With the default ``shared=0.2``, two phrases with disjoint words have cosine ~0.04, "red
    apple"·"green apple" ~0.52, and a phrase with itself 1. Repeated words count repeatedly.
    """

    def __init__(self, dim: int = 512, shared: float = 0.2):
        if int(dim) != dim or dim < 2:
            raise ValueError(f"HashTextEncoder: dim must be an integer >= 2, got {dim!r}")
        if not (0.0 <= float(shared) < 10.0):
            raise ValueError(f"HashTextEncoder: shared must be in [0, 10), got {shared!r}")
        self.dim = int(dim)
        self.shared = float(shared)
        self._cache: dict[str, np.ndarray] = {}

    def word_vector(self, word: str) -> np.ndarray:
        """[dim] float64 unit vector of one word (already lower-cased)."""
        v = self._cache.get(word)
        if v is None:
            seed = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
            g = np.random.default_rng(seed).standard_normal(self.dim)
            v = g / np.linalg.norm(g)
            self._cache[word] = v
        return v

    def encode_numpy(self, texts: list[str]) -> np.ndarray:
        """Like :meth:`encode` but returns float64 numpy ``[Q, dim]``."""
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim))
        shared = self.word_vector(_SHARED_TOKEN)
        for i, t in enumerate(texts):
            words = tokenize(t)
            if not words:
                raise ValueError(f"HashTextEncoder: phrase {t!r} has no words to encode")
            s = np.sum([self.word_vector(w) for w in words], axis=0)
            s = s / np.linalg.norm(s) + self.shared * shared
            out[i] = s / np.linalg.norm(s)
        return out

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``texts``: Q phrases -> float32 ``[Q, dim]``, rows L2-normalised."""
        return torch.from_numpy(self.encode_numpy(texts).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# table encoder
# ---------------------------------------------------------------------------------------------
class UnknownPhraseError(KeyError):
    """A phrase that a :class:`TableTextEncoder` has no vector for (a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0]) if self.args else ""


def _load_table(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"text feature table {path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".pt", ".pth"):
        raise ValueError(f"text feature table {path}: unsupported extension {path.suffix!r} "
                         "(expected .json or .pt)")
    try:
        if suffix == ".json":
            with open(path, "r", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # json.JSONDecodeError, pickle/zip errors, decoding errors, ...
        raise ValueError(f"text feature table {path}: cannot parse: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"text feature table {path}: expected a non-empty mapping phrase -> vector, "
                         f"got {type(data).__name__}")
    return data


class TableTextEncoder:
    """Precomputed text embeddings looked up by phrase.

    ``path``: a ``.json`` file ``{phrase: [dim floats]}`` or a ``.pt``/``.pth`` file holding a
    dict ``{phrase: tensor [dim] | list}``. All vectors must share one length; they are
    L2-normalised on output. Lookup is exact first, then case-insensitive."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        data = _load_table(self.path)
        vecs: dict[str, np.ndarray] = {}
        dim = None
        for k, v in data.items():
            if not isinstance(k, str):
                raise ValueError(f"text feature table {self.path}: key {k!r} is not a string")
            try:
                a = np.asarray(v.detach().cpu().numpy() if torch.is_tensor(v) else v, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"text feature table {self.path}: entry {k!r} is not a numeric vector") from None
            if a.ndim != 1 or a.size < 1:
                raise ValueError(f"text feature table {self.path}: entry {k!r} has shape {a.shape}, "
                                 "expected a 1-D vector")
            if dim is None:
                dim = a.size
            elif a.size != dim:
                raise ValueError(f"text feature table {self.path}: entry {k!r} has length {a.size}, "
                                 f"others have {dim}")
            n = np.linalg.norm(a)
            if not np.isfinite(n) or n == 0:
                raise ValueError(f"text feature table {self.path}: entry {k!r} is zero or not finite")
            vecs[k] = a / n
        self.dim = int(dim)
        self._vecs = vecs
        self._lower = {}
        for k in vecs:
            self._lower.setdefault(k.lower(), k)

    @property
    def phrases(self) -> list[str]:
        return list(self._vecs)

    def _lookup(self, phrase: str) -> np.ndarray:
        v = self._vecs.get(phrase)
        if v is None:
            k = self._lower.get(phrase.lower())
            if k is not None:
                return self._vecs[k]
            known = ", ".join(repr(p) for p in list(self._vecs)[:6])
            more = f" (and {len(self._vecs) - 6} more)" if len(self._vecs) > 6 else ""
            raise UnknownPhraseError(f"phrase {phrase!r} is not in text feature table {self.path}; "
                                     f"known phrases: {known}{more}")
        return v

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``texts``: Q phrases -> float32 ``[Q, dim]``, rows L2-normalised."""
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        return torch.from_numpy(np.stack([self._lookup(t) for t in texts]).astype(np.float32))


def save_text_table(path: Union[str, Path], table: dict) -> Path:
    """Writes ``{phrase: vector [dim]}`` as JSON (lists of floats, 8 significant digits)."""
    path = Path(path)
    out = {k: [float(f"{x:.8g}") for x in np.asarray(v, dtype=np.float64).reshape(-1)]
           for k, v in table.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    return path


# ---------------------------------------------------------------------------------------------
# OpenCLIP encoder
# ---------------------------------------------------------------------------------------------
class OpenCLIPTextEncoder:
    """OpenCLIP text tower (LangSplat / COS3D: ``ViT-B-16``, ``laion2b_s34b_b88k``, fp16 on CUDA).

    ``encode(texts)``: open_clip's tokenizer for ``model`` (its BPE vocabulary ships with the
    package) -> ``encode_text`` -> L2-normalised -> float32 ``[Q, dim]`` on the CPU. Weights:
    ``weights`` (a file, or a file name inside ``ckpt_dir``) or else the first of
    ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` in ``ckpt_dir`` (default
    ``$CKPT_DIR`` or ``<repo>/ckpts``). Nothing is downloaded. The model is loaded on the first
    phrase that is not cached.

    ``pretrained``: the OpenCLIP tag of the weights (e.g. ``laion2b_s34b_b88k``), a label only: the
    weights still come from the local file. A file whose sha256 is one of the known published files
    (:func:`known_openclip_weights`) must be that model and tag, else ``ValueError`` at construction;
    ``self.pretrained`` is the given tag, else the known file's, else ``None`` (unknown).

    Caches: every phrase encoded by this object is kept in a dict. With ``cache_path`` the vectors
    also go to a ``.pt`` file ``{"<model>|<precision>|<weights sha256>": {phrase: float32 [dim]}}``
    (written via a temp file + rename), so other weights or another precision never reuse them.
    """

    def __init__(self, ckpt_dir=None, model: str = "ViT-B-16", weights=None, device="auto",
                 precision: str = "auto", cache_path=None, batch_size: int = 256,
                 pretrained: Union[str, None] = None):
        from scene.foundation import pick_device, resolve_precision
        from scene.foundation import find_openclip_weights, offline_hub, sha256_file

        offline_hub()
        import open_clip

        cfg = open_clip.get_model_config(model)
        if cfg is None:
            raise ValueError(f"text encoder 'openclip': unknown OpenCLIP model {model!r} (e.g. ViT-B-16)")
        if int(batch_size) < 1:
            raise ValueError(f"text encoder 'openclip': batch_size must be >= 1, got {batch_size}")
        if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
            raise ValueError(f"text encoder 'openclip': pretrained must be a non-empty tag, got {pretrained!r}")
        self.model_name = model
        self.weights_path = find_openclip_weights(ckpt_dir, weights, model=model)
        self.sha256 = sha256_file(self.weights_path)
        known = known_openclip_weights(self.sha256)
        if known is not None and (known[0] != model or (pretrained is not None and known[1] != pretrained)):
            want = f"{model} {pretrained}" if pretrained is not None else model
            raise ValueError(f"text encoder 'openclip': {self.weights_path} is the OpenCLIP {known[0]} {known[1]} "
                             f"file (sha256 {self.sha256[:12]}...), not {want}: pass the weights of {want} "
                             f"(weights=<file>) or ask for {known[0]} {known[1]}")
        self.pretrained = pretrained if pretrained is not None else (known[1] if known else None)
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dim = int(cfg["embed_dim"])
        self.batch_size = int(batch_size)
        self.cache_key = f"{model}|{self.precision}|{self.sha256}"
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.model_calls = 0  # number of encode_text forward passes (tests / logging)
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, torch.Tensor] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            self._cache.update(self._read_disk().get(self.cache_key, {}))

    # -- disk cache ----------------------------------------------------------------------------
    def _read_disk(self) -> dict:
        try:
            data = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"text cache {self.cache_path}: cannot read ({type(e).__name__}); delete it") from None
        if not isinstance(data, dict):
            raise ValueError(f"text cache {self.cache_path}: not a dict; delete it")
        table = data.get(self.cache_key, {})
        for k, v in table.items():
            if not isinstance(k, str) or not torch.is_tensor(v) or tuple(v.shape) != (self.dim,):
                raise ValueError(f"text cache {self.cache_path}: entry {k!r} is not a [{self.dim}] vector; delete it")
        data[self.cache_key] = {k: v.to(torch.float32) for k, v in table.items()}
        return data

    def _write_disk(self) -> None:
        data = self._read_disk() if self.cache_path.is_file() else {}
        data[self.cache_key] = dict(self._cache)
        torch_save(data, self.cache_path)

    # -- model ---------------------------------------------------------------------------------
    def _load(self) -> None:
        from scene.foundation import load_openclip, load_tokenizer

        self._tokenizer = load_tokenizer(self.model_name, self.weights_path)   # a missing tokenizer: before the model
        self._model = load_openclip(self.model_name, self.weights_path, self.device, self.precision)

    @torch.no_grad()
    def _run_model(self, texts: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        out = []
        for s in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(texts[s:s + self.batch_size]).to(self.device)
            e = self._model.encode_text(tokens)                     # [B, dim] in the model precision
            e = e / e.norm(dim=-1, keepdim=True)
            out.append(e.to(torch.float32).cpu())
            self.model_calls += 1
        e = torch.cat(out)
        return e / e.norm(dim=-1, keepdim=True)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``texts``: Q phrases -> float32 ``[Q, dim]``, rows L2-normalised."""
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for t, v in zip(missing, self._run_model(missing)):
                self._cache[t] = v.clone()
            if self.cache_path is not None:
                self._write_disk()
        return torch.stack([self._cache[t] for t in texts])


def known_openclip_weights(sha256: str) -> Union[tuple, None]:
    """``(model, pretrained tag)`` of a published OpenCLIP weights file with this sha256 (the files
    listed in ``scene.foundation.OPENCLIP_FILES``: ViT-B-16 laion2b_s34b_b88k), else ``None``."""
    from scene.foundation import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_TAG, OPENCLIP_FILES

    known = {f.sha256: (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_TAG) for f in OPENCLIP_FILES if f.sha256}
    known.update(EXTRA_OPENCLIP_WEIGHTS)
    return known.get(sha256)


# sha256 -> (model, tag) of further known weight files (empty; tests and local setups may add some)
EXTRA_OPENCLIP_WEIGHTS: dict[str, tuple] = {}


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "hash": HashTextEncoder,
    "table": TableTextEncoder,
    "openclip": lambda **kw: OpenCLIPTextEncoder(**kw),
}


def build_text_encoder(kind: str, **kwargs) -> TextEncoder:
    """``"hash"`` (dim=512, shared=0.2) | ``"table"`` (path=...) | ``"openclip"`` (ckpt_dir=None,
    model="ViT-B-16", weights=None, device="auto", precision="auto", cache_path=None, batch_size=256,
    pretrained=None).

    Which kind (and which OpenCLIP model / tag) matches a scene's features:
    ``scene.provenance.resolve_text_encoder``; ``scene.provenance.build_resolved_encoder`` builds it."""
    builder = TEXT_ENCODERS.get(kind)
    if builder is None:
        raise ValueError(f"unknown text encoder {kind!r}; choose one of {sorted(TEXT_ENCODERS)}")
    if kind == "table" and "path" not in kwargs:
        raise ValueError("text encoder 'table' needs path=<text_features.json or .pt>")
    try:
        return builder(**kwargs)
    except TypeError as e:
        raise ValueError(f"text encoder {kind!r}: bad arguments {sorted(kwargs)}: {e}") from None
