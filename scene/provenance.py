"""What made a scene's language features, and which query text encoder matches them.

Queries are compared with the scene's per-mask CLIP vectors (``<scene>/<features_folder>/*_f.npy``),
so the text encoder must embed into the same space. Encoding queries with another space (the
``hash`` toy encoder on real OpenCLIP features, another CLIP model, a table of foreign vectors)
gives near-chance masks and no error. This module reads the record of what made the features and
either picks the encoder (``auto``) or refuses an explicit choice that cannot match.

* :func:`feature_provenance` -> the record, from the first of
  (a) ``<scene>/<features_folder>/manifest.json`` written by ``python -m preprocess.run``
      (``settings.clip.model`` / ``file`` / ``sha256``; the tag is ``settings.clip.pretrained``
      when present, else inferred from the weights' sha256 when it is a known published file);
  (b) ``<scene>/synthetic.json`` written by ``python -m preprocess.synthetic``: the hash space,
      ``text_space`` = {"encoder": "hash", "dim", "shared"}; older scenes without that field are
      the same hash space (``synthetic.json`` present => hash);
  (c) no record (OpenGaussian's LERF-OVS download): LangSplat's OpenCLIP ViT-B-16 laion2b_s34b_b88k.
  The dim is the width of the ``_f`` rows when any ``_f.npy`` exists (read with ``mmap_mode="r"``).
* :func:`resolve_text_encoder` -> the encoder to build (``auto`` | ``hash`` | ``table`` | ``openclip``),
  or :class:`TextEncoderMismatchError` (a ``ValueError``) naming both sides.
* :func:`build_resolved_encoder` -> ``(encoder, record)`` for a resolved dict; for ``openclip`` it
  also checks that the local weights are the ones the manifest recorded (sha256, or the same
  published model+tag) and that the width matches.
* :func:`table_space_check`: the cheap statistical test that a table's vectors live in the
  features' space (see its docstring for the statistic and the measurements behind the threshold).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

DEFAULT_OPENCLIP_MODEL = "ViT-B-16"          # LangSplat / COS3D / OpenGaussian
DEFAULT_OPENCLIP_TAG = "laion2b_s34b_b88k"
DEFAULT_DIM = 512
DEFAULT_SOURCE = f"default (no record: LangSplat's OpenCLIP {DEFAULT_OPENCLIP_MODEL} {DEFAULT_OPENCLIP_TAG})"
CHOICES = ("auto", "hash", "table", "openclip")

# table_space_check parameters (see its docstring; measured values there)
SPACE_VIEWS = 4          # _f files sampled, evenly spaced over the sorted views
SPACE_MAX_ROWS = 4096    # rows kept from them (deterministic subsample beyond)
SPACE_MAX_PHRASES = 1024  # table phrases tested (deterministic subsample beyond)
SPACE_RANDOM = 2000      # random unit directions of the baseline
SPACE_QUANTILE = 0.99    # a phrase "matches" when its best cosine beats this quantile of the random ones
SPACE_ALPHA = 1e-3       # refuse unless P(Binomial(Q, 1 - quantile) >= matches) <= this
SPACE_SEED = 0


class TextEncoderMismatchError(ValueError):
    """The requested text encoder cannot embed into the space of the scene's language features."""


# ---------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------
def _f_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_f.npy")) if folder.is_dir() else []


def _f_dim(files: list[Path]) -> Optional[int]:
    """Width of the ``_f`` rows (from the first readable 2-D file's header; no data read)."""
    for f in files:
        try:
            a = np.load(f, mmap_mode="r")
        except (OSError, ValueError):
            continue
        if a.ndim == 2:
            return int(a.shape[1])
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the record of what made the language features "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _known_tag(model: Optional[str], sha256: Optional[str]) -> Optional[str]:
    from scene.encoders import known_openclip_weights

    known = known_openclip_weights(sha256) if sha256 else None
    return known[1] if known is not None and known[0] == model else None


def feature_provenance(source_path, features_folder: str = "language_features") -> dict:
    """What made ``<source_path>/<features_folder>``'s language features.

    Returns ``{"encoder": "openclip" | "hash", "model": str | None, "pretrained": str | None,
    "dim": int, "source": "manifest.json" | "synthetic.json" | DEFAULT_SOURCE, "path": record file
    or None, "folder": features folder}`` plus, for our manifest, ``"weights_file"`` and
    ``"weights_sha256"``; for the hash space ``"shared"``; ``"note"`` where something was inferred.
    A manifest / synthetic record that cannot be read is a ``ValueError`` naming the file."""
    scene = Path(source_path)
    folder = scene / features_folder
    files = _f_files(folder)
    f_dim = _f_dim(files)
    man = folder / "manifest.json"
    if man.is_file():
        m = _read_json(man)
        clip = (m.get("settings") or {}).get("clip") if isinstance(m.get("settings"), dict) else None
        if not isinstance(clip, dict) or not clip.get("model"):
            raise ValueError(f"{man}: no settings.clip.model: not a manifest written by python -m preprocess.run "
                             f"(move it away, or re-run the preprocessing)")
        model, sha = str(clip["model"]), clip.get("sha256")
        pretrained = clip.get("pretrained") or _known_tag(model, sha)
        dim = f_dim
        if dim is None:  # no _f file yet: the width the manifest's format line states
            hit = re.search(r"\[M, (\d+)\]", str((m.get("format") or {}).get("_f.npy", "")))
            dim = int(hit.group(1)) if hit else None
        out = {"encoder": "openclip", "model": model, "pretrained": pretrained, "dim": dim,
               "source": "manifest.json", "path": str(man), "folder": str(folder),
               "weights_file": clip.get("file"), "weights_sha256": sha}
        if pretrained is None:
            out["note"] = (f"pretrained tag not recorded and weights {clip.get('file')} "
                           f"(sha256 {str(sha)[:12]}...) are not a known published file")
        return out
    syn = scene / "synthetic.json"
    if syn.is_file():
        try:
            rec = _read_json(syn)
        except ValueError:
            rec = {}
        ts = rec.get("text_space") if isinstance(rec.get("text_space"), dict) else None
        if ts is not None and ts.get("encoder") != "hash":
            raise ValueError(f"{syn}: text_space.encoder is {ts.get('encoder')!r}; only 'hash' is known")
        dim = int(ts["dim"]) if ts is not None and "dim" in ts else (f_dim or DEFAULT_DIM)
        if f_dim is not None and f_dim != dim:
            raise ValueError(f"{syn} records a {dim}-D hash space but the rows of {folder}/*_f.npy are "
                             f"{f_dim}-D: regenerate the scene (python -m preprocess.synthetic --force)")
        out = {"encoder": "hash", "model": None, "pretrained": None, "dim": dim,
               "shared": float(ts.get("shared", 0.2)) if ts is not None else 0.2,
               "source": "synthetic.json", "path": str(syn), "folder": str(folder)}
        if ts is None:
            out["note"] = "synthetic.json has no text_space field (older generator): the hash encoder is implied"
        return out
    out = {"encoder": "openclip", "model": DEFAULT_OPENCLIP_MODEL, "pretrained": DEFAULT_OPENCLIP_TAG,
           "dim": f_dim if f_dim is not None else DEFAULT_DIM, "source": DEFAULT_SOURCE, "path": None,
           "folder": str(folder)}
    if f_dim is not None and f_dim != DEFAULT_DIM:
        out.update(model=None, pretrained=None,
                   note=f"no record and the _f rows are {f_dim}-D, not {DEFAULT_OPENCLIP_MODEL}'s {DEFAULT_DIM}: "
                        f"the model is unknown")
    return out


def describe(prov: dict) -> str:
    """``<folder> were made by <what> (<source>)`` for messages."""
    return f"{prov['folder']} were made by {describe_space(prov)} ({_short_source(prov)})"


def describe_space(prov: dict) -> str:
    if prov["encoder"] == "hash":
        return f"the synthetic {prov['dim']}-D hash encoder"
    if prov.get("model") is None:
        return f"an unknown {prov['dim']}-D encoder"
    tag = prov.get("pretrained")
    if tag is None:
        sha = prov.get("weights_sha256")
        tag = f"(weights {prov.get('weights_file')}, sha256 {str(sha)[:12]}...)" if sha else "(tag unknown)"
    return f"OpenCLIP {prov['model']} {tag}"


def _short_source(prov: dict) -> str:
    if prov["source"] != DEFAULT_SOURCE:
        return prov["source"]
    return "no record: assumed LangSplat's default" if prov.get("model") else "no record"


# ---------------------------------------------------------------------------------------------
# table-space check
# ---------------------------------------------------------------------------------------------
def sample_feature_rows(folder, views: int = SPACE_VIEWS, max_rows: int = SPACE_MAX_ROWS) -> tuple:
    """(rows float32 [N, D] unit-norm, number of views read) from ``views`` evenly spaced ``_f`` files
    (more files while fewer than 64 rows were found); zero / non-finite rows are dropped."""
    files = _f_files(Path(folder))
    if not files:
        return np.zeros((0, 0), np.float32), 0
    order = list(dict.fromkeys(np.linspace(0, len(files) - 1, min(views, len(files))).round().astype(int).tolist()))
    order += [i for i in range(len(files)) if i not in order]
    parts, used, n = [], 0, 0
    for k, i in enumerate(order):
        if k >= views and n >= 64:
            break
        a = np.load(files[i], mmap_mode="r")
        if a.ndim != 2:
            continue
        a = np.asarray(a, dtype=np.float32)
        norm = np.linalg.norm(a, axis=1)
        ok = np.isfinite(norm) & (norm > 0)
        if ok.any():
            parts.append(a[ok] / norm[ok, None])
            n += int(ok.sum())
        used += 1
        if n >= max_rows:
            break
    if not parts:
        return np.zeros((0, 0), np.float32), used
    rows = np.concatenate(parts)
    if len(rows) > max_rows:
        rows = rows[np.sort(np.random.default_rng(SPACE_SEED).choice(len(rows), max_rows, replace=False))]
    return rows, used


def table_space_check(vectors, rows, quantile: float = SPACE_QUANTILE, alpha: float = SPACE_ALPHA,
                      n_random: int = SPACE_RANDOM, max_phrases: int = SPACE_MAX_PHRASES) -> dict:
    """Are the table ``vectors`` [Q, D] in the space of the feature ``rows`` [N, D]?

    Statistic: for each phrase, its best cosine to the sampled feature rows, ``m_i = max_j cos(t_i, f_j)``.
    The same for ``n_random`` random unit directions (fixed seed) gives the chance distribution of
    that best cosine *for these rows* (it absorbs their anisotropy: CLIP-like image features share
    a strong common direction, |mean row| ~0.96 on the synthetic scenes). A phrase matches when
    ``m_i`` exceeds the ``quantile`` (99%) of the random ones; under chance the number of matches
    ``k`` is Binomial(Q, 0.01), and the table is in the space when ``P(Binomial(Q, 0.01) >= k) <= alpha``
    (1e-3). Counting matches rather than averaging ``m_i`` keeps a big table with a few scene phrases
    among many others acceptable (the mean is diluted; the count is not).

    Measured (``preprocess.synthetic`` scenes: seeds 0-3, presets default / hard / clean, 4-12
    views, 142-258 rows): random 99% quantile 0.128-0.136 (random mean 0.02-0.03, sd 0.042); the
    scene's own ``text_features.json`` (14 phrases): 9-11 matches, p 2e-15 .. 4e-20, mean best cosine
    0.18-0.22; the same table plus 200 random vectors: 10-14 matches of 214, p 7e-5 .. 5e-8; a hash
    encoder with other word vectors (same dim, another "model"): 0 matches, p = 1; 200 random tables
    each of 1, 2, 5, 14, 100 vectors: smallest p 0.013 (none <= 1e-3). Not measured on real OpenCLIP
    features (no weights here); there matching text-image cosines are ~0.3 against a chance level
    near |mean row| * 2.3 / sqrt(512) ~0.1, so scene phrases should match as on the synthetic scenes.

    With too few phrases for any count to reach ``alpha`` (Q = 1) or no rows, the test cannot
    decide: ``in_space`` is ``None`` (callers accept, noting it). Returns a dict of the numbers."""
    from scipy.stats import binom

    t = np.asarray(vectors, dtype=np.float32)
    f = np.asarray(rows, dtype=np.float32)
    p0 = 1.0 - float(quantile)
    out = {"statistic": f"matches = #phrases whose best cosine to the feature rows beats the {quantile:.0%} "
                        f"quantile of {n_random} random directions; in space iff P(Binomial(Q, {p0:g}) >= "
                        f"matches) <= {alpha:g}",
           "phrases": int(len(t)), "rows": int(len(f))}
    if len(t) > max_phrases:
        t = t[np.sort(np.random.default_rng(SPACE_SEED).choice(len(t), max_phrases, replace=False))]
        out["phrases_tested"] = int(len(t))
    q = len(t)
    if q == 0 or len(f) == 0 or binom.sf(q - 1, q, p0) > alpha:
        out.update(in_space=None, reason="too few phrases or no feature rows to decide")
        return out
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    best = (t @ f.T).max(axis=1)
    r = np.random.default_rng(SPACE_SEED).standard_normal((n_random, f.shape[1])).astype(np.float32)
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    rbest = (r @ f.T).max(axis=1)
    tau = float(np.quantile(rbest, quantile))
    k = int((best > tau).sum())
    p = float(binom.sf(k - 1, q, p0)) if k > 0 else 1.0
    out.update(threshold=round(tau, 4), matches=k, expected_by_chance=round(q * p0, 3), p_value=p,
               mean_best_cos=round(float(best.mean()), 4), random_mean_best_cos=round(float(rbest.mean()), 4),
               in_space=bool(p <= alpha))
    return out


# ---------------------------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------------------------
def _refuse(requested: str, prov: dict, fix: str, what: str = "") -> TextEncoderMismatchError:
    return TextEncoderMismatchError(f"query.text_encoder={requested}{what} but {describe(prov)}: {fix}")


def _openclip_dim(model: str) -> Optional[int]:
    try:
        import open_clip
    except ImportError:
        return None
    cfg = open_clip.get_model_config(model)
    return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None


def resolve_text_encoder(requested: str, source_path, features_folder: str = "language_features",
                         text_table: str = "", *, model: str = "", pretrained: str = "",
                         check_space: bool = True) -> dict:
    """The text encoder for queries against ``<source_path>/<features_folder>``.

    ``requested``: ``auto`` (the encoder of the features' provenance) | ``hash`` | ``table`` |
    ``openclip``. ``text_table`` (table only): the phrase -> vector file, default
    ``<source_path>/text_features.json``. ``model`` / ``pretrained`` (openclip only): an explicit
    OpenCLIP model / tag; empty = the recorded ones. ``check_space``: run :func:`table_space_check`.

    Returns ``{"encoder", "model", "pretrained", "dim", "provenance": feature_provenance(...)}``
    plus ``"shared"`` (hash), ``"weights_sha256"`` (openclip, the recorded weights or None),
    ``"path"`` and ``"space_check"`` (table). Raises :class:`TextEncoderMismatchError` for a
    choice that cannot match (message: both sides and what to use instead)."""
    if requested not in CHOICES:
        raise ValueError(f"query.text_encoder={requested!r}: unknown; choose one of {', '.join(CHOICES)}")
    prov = feature_provenance(source_path, features_folder)
    res = {"requested": requested, "encoder": None, "model": None, "pretrained": None, "dim": prov["dim"],
           "provenance": prov}
    if requested == "auto":
        if prov["encoder"] == "openclip" and prov.get("model") is None:
            raise TextEncoderMismatchError(
                f"query.text_encoder=auto cannot tell which encoder made {prov['folder']} ({prov['note']}): "
                f"set query.text_encoder=table with a table of vectors of that model, or openclip with its model")
        requested_kind = prov["encoder"]
    else:
        requested_kind = requested
    if (model or pretrained) and requested_kind != "openclip":
        raise ValueError(f"query.text_encoder={requested}: an OpenCLIP model/tag ({model or pretrained}) only "
                         f"applies to openclip")

    if requested_kind == "hash":
        if prov["encoder"] != "hash":
            fix = "use auto or openclip" if prov.get("model") else "use table or openclip"
            raise _refuse(requested, prov, fix)
        res.update(encoder="hash", dim=prov["dim"], shared=prov.get("shared", 0.2))
        return res

    if requested_kind == "openclip":
        if prov["encoder"] != "openclip":
            raise _refuse(requested, prov, "use auto or hash")
        want_model = model or prov.get("model")
        want_tag = pretrained or prov.get("pretrained")
        recorded = prov["source"] == "manifest.json"
        if want_model is None:
            raise _refuse(requested, prov, "name the model (and tag) that made them, or use table", what=" with no model")
        if model and prov.get("model") and model != prov["model"] and recorded:
            raise _refuse(requested, prov, f"use auto, or openclip with model {prov['model']}",
                          what=f" with model {model}")
        if pretrained and prov.get("pretrained") and pretrained != prov["pretrained"] and recorded:
            raise _refuse(requested, prov, f"use auto, or openclip with tag {prov['pretrained']}",
                          what=f" with pretrained {pretrained}")
        mdim = _openclip_dim(want_model)
        if mdim is not None and prov["dim"] is not None and mdim != prov["dim"]:
            raise _refuse(requested, prov, f"use a model with {prov['dim']}-D embeddings, or auto",
                          what=f" with model {want_model} ({mdim}-D embeddings; the features are {prov['dim']}-D)")
        res.update(encoder="openclip", model=want_model, pretrained=want_tag,
                   dim=mdim if mdim is not None else prov["dim"],
                   weights_sha256=prov.get("weights_sha256") if recorded and want_model == prov.get("model") else None)
        return res

    # table
    from scene.encoders import TableTextEncoder

    path = Path(text_table) if text_table else Path(source_path) / "text_features.json"
    table = TableTextEncoder(path)
    vecs = np.stack([table._vecs[k] for k in table.phrases])
    if prov["dim"] is not None and table.dim != prov["dim"]:
        raise TextEncoderMismatchError(
            f"query.text_encoder={requested}: {path} holds {table.dim}-D vectors but {describe(prov)} "
            f"and are {prov['dim']}-D: use auto, or a table of {prov['dim']}-D vectors made with "
            f"{describe_space(prov)}")
    check = None
    if check_space:
        rows, views = sample_feature_rows(prov["folder"])
        check = table_space_check(vecs, rows)
        check["views"] = views
        if check["in_space"] is False:
            tested = check.get("phrases_tested", check["phrases"])
            raise TextEncoderMismatchError(
                f"query.text_encoder={requested}: the vectors of {path} are not in the space of the features, "
                f"{describe(prov)}: only {check['matches']} of {tested} phrases are closer to some feature row "
                f"than 99% of random directions are (p={check['p_value']:.2g}, needs <= {SPACE_ALPHA:g}); "
                f"use auto, or a table encoded with {describe_space(prov)}")
    res.update(encoder="table", model=prov.get("model"), pretrained=prov.get("pretrained"), dim=table.dim,
               path=str(path), space_check=check)
    return res


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def _weights_identity(sha256: Optional[str]):
    from scene.encoders import known_openclip_weights

    if not sha256:
        return None
    return known_openclip_weights(sha256) or sha256


def build_resolved_encoder(resolved: dict, cache_path: Union[str, Path, None] = None, ckpt_dir=None,
                           weights=None, device="auto", precision: str = "auto"):
    """``(encoder, record)`` for a dict of :func:`resolve_text_encoder`; ``record`` is ``resolved``
    plus, for openclip, the weights actually used (``weights_file``, ``weights_sha256_used``).

    openclip: the local weights (``weights`` / ``ckpt_dir`` as ``OpenCLIPTextEncoder``) must be the
    manifest's: the same sha256, or both known published files of the same model + tag; else
    :class:`TextEncoderMismatchError`. Without a recorded sha256 (no manifest) any file that loads
    into the model is used."""
    from scene.encoders import build_text_encoder

    kind = resolved["encoder"]
    record = {k: v for k, v in resolved.items()}
    if kind == "hash":
        return build_text_encoder("hash", dim=int(resolved["dim"]), shared=float(resolved.get("shared", 0.2))), record
    if kind == "table":
        return build_text_encoder("table", path=resolved["path"]), record
    if kind != "openclip":
        raise ValueError(f"build_resolved_encoder: unknown encoder {kind!r}")
    kw = dict(model=resolved["model"], ckpt_dir=ckpt_dir, weights=weights, device=device, precision=precision,
              cache_path=cache_path)
    if resolved.get("pretrained"):
        kw["pretrained"] = resolved["pretrained"]
    enc = build_text_encoder("openclip", **kw)
    want = _weights_identity(resolved.get("weights_sha256"))
    have = _weights_identity(enc.sha256)
    if want is not None and have != want:
        prov = resolved["provenance"]
        raise TextEncoderMismatchError(
            f"OpenCLIP weights {enc.weights_path} (sha256 {enc.sha256[:12]}...) are not the ones that made "
            f"{prov['folder']} ({prov.get('path')}: {prov.get('weights_file')}, sha256 "
            f"{str(resolved.get('weights_sha256'))[:12]}...): put that file in the weights folder "
            f"(see ckpts/README.md) or re-run python -m preprocess.run --overwrite")
    if resolved.get("dim") is not None and enc.dim != int(resolved["dim"]):
        raise TextEncoderMismatchError(f"OpenCLIP {resolved['model']} embeds into {enc.dim}-D but "
                                       f"{resolved['provenance']['folder']} rows are {resolved['dim']}-D")
    record.update(weights_file=str(enc.weights_path), weights_sha256_used=enc.sha256,
                  pretrained=enc.pretrained if record.get("pretrained") is None else record["pretrained"])
    return enc, record
