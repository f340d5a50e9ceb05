"""The foundation models' one home: local weight files (lookup, sha256, errors that say where to get
them) and OpenCLIP loading (device, precision), used by the preprocessing (SAM, the image tower) and
by the query (the text tower), and SAM loading (architecture builders, strict state_dict load).

Nothing here touches the network. The files live in a checkpoint folder (``--ckpt_dir``; default
``$CKPT_DIR`` or ``<repo>/ckpts``), see ``ckpts/README.md``:

* SAM: ``sam_vit_h_4b8939.pth`` (LangSplat's model; ViT-L / ViT-B optional), a plain
  ``state_dict`` saved with ``torch.save``;
* OpenCLIP ViT-B-16 ``laion2b_s34b_b88k``: ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin`` from the Hugging Face repo ``laion/CLIP-ViT-B-16-laion2B-s34B-b88K``.

Sizes and hashes are those of LangSplat's preprocessing notes (see ``ckpts/README.md``). The SAM numbers come from
third-party code (UNVERIFIED); they are only shown in messages, never enforced: the manifest
records the sha256 of the file actually used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .atomic import file_sha256

REPO = Path(__file__).resolve().parents[1]

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_PAGE = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
OPENCLIP_REPO = "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
OPENCLIP_PAGE = f"https://huggingface.co/{OPENCLIP_REPO}/tree/main"


@dataclass(frozen=True)
class WeightFile:
    name: str                 # file name inside the checkpoint folder
    source: str               # where to download it
    size: Optional[int]       # bytes (None: unknown)
    sha256: Optional[str]     # expected hash as published by third parties (informational)
    verified: bool            # were size/sha256 checked against a download? (no, for all below)


# docs/method.md §6.6, ckpts/README.md (sizes / sha256 UNVERIFIED: third-party tables, Meta publishes none)
SAM_CHECKPOINTS: dict[str, WeightFile] = {
    "vit_h": WeightFile("sam_vit_h_4b8939.pth", SAM_URL + "sam_vit_h_4b8939.pth", 2_564_550_879,
                        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", False),
    "vit_l": WeightFile("sam_vit_l_0b3195.pth", SAM_URL + "sam_vit_l_0b3195.pth", 1_249_524_607,
                        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", False),
    "vit_b": WeightFile("sam_vit_b_01ec64.pth", SAM_URL + "sam_vit_b_01ec64.pth", 375_042_383,
                        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", False),
}
# docs/method.md §6.6, ckpts/README.md (sha256 from the HF blob pages; both files ~599 MB, exact byte counts UNVERIFIED).
# open_clip itself prefers the safetensors file when both exist; so do we.
OPENCLIP_FILES: tuple[WeightFile, ...] = (
    WeightFile("open_clip_model.safetensors",
               f"https://huggingface.co/{OPENCLIP_REPO}/blob/main/open_clip_model.safetensors", None,
               "3f25d29d3cc74e1d25d47e0593b4dd0864ced1e9b4d8e486a247ca4502f227f1", False),
    WeightFile("open_clip_pytorch_model.bin",
               f"https://huggingface.co/{OPENCLIP_REPO}/blob/main/open_clip_pytorch_model.bin", None,
               "1f16b1274ca25493b1f36225efe81d05f66a3f33c487acd1a07c5ba87920de6f", False),
)
DEFAULT_CLIP_MODEL = "ViT-B-16"
DEFAULT_CLIP_TAG = "laion2b_s34b_b88k"

# image normalisation of the towers (open_clip's pretrained configs): OpenAI CLIP's for the OpenCLIP
# ViT-B-16 LangSplat uses, 0.5 / 0.5 for SigLIP's WebLI models (open_clip.get_pretrained_cfg(..., "webli"))
OPENAI_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# files of a Hugging Face tokenizer folder (SigLIP's sentencepiece tokenizer, read by transformers)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


@dataclass(frozen=True)
class LanguageModel:
    """A language (image + text) model of the preprocessing and the query, chosen by ``name``."""
    name: str                 # --language / manifest settings.clip.family
    model: str                # open_clip config name
    tag: str                  # the pretrained tag of its published weights (a label: files are local)
    folder: str               # sub-folder of the weights folder ("" = the folder itself)
    source: str               # where to get the files
    size: str                 # download size, for the README table


LANGUAGE_MODELS: dict[str, LanguageModel] = {
    "openclip": LanguageModel("openclip", DEFAULT_CLIP_MODEL, DEFAULT_CLIP_TAG, "", OPENCLIP_PAGE, "~599 MB"),
    # SigLIP B/16 at 224 px, 768-D (open_clip's ViT-B-16-SigLIP config); the HF repo holds the open_clip
    # weights and the tokenizer files side by side, and the whole folder is what is needed
    "siglip": LanguageModel("siglip", "ViT-B-16-SigLIP", "webli", "ViT-B-16-SigLIP",
                            "https://huggingface.co/timm/ViT-B-16-SigLIP/tree/main", "~813 MB"),
}


def is_siglip(model_name: str) -> bool:
    """A SigLIP-trained open_clip config (its sigmoid loss has a logit bias; OpenCLIP's has none)."""
    import open_clip

    cfg = open_clip.get_model_config(model_name) or {}
    return "init_logit_bias" in cfg


def image_mean_std(model_name: str) -> tuple:
    """(mean, std) the image tower of ``model_name`` was trained with."""
    return SIGLIP_MEAN_STD if is_siglip(model_name) else OPENAI_MEAN_STD


def model_weights_dir(model_name: str, ckpt_dir=None) -> Path:
    """Where the files of open_clip model ``model_name`` live: the weights folder for LangSplat's
    ViT-B-16, ``<weights folder>/<model name>/`` (a snapshot of its Hugging Face repo) for the others."""
    d = checkpoint_dir(ckpt_dir)
    return d if model_name == DEFAULT_CLIP_MODEL else d / model_name


def load_tokenizer(model_name: str, weights: Union[str, Path]):
    """open_clip's tokenizer for ``model_name``: its bundled BPE vocabulary, or, for a model with a
    Hugging Face tokenizer (SigLIP), the tokenizer files in the weights file's folder (never fetched)."""
    offline_hub()
    import open_clip

    cfg = open_clip.get_model_config(model_name) or {}
    text = cfg.get("text_cfg", {})
    if not text.get("hf_tokenizer_name"):
        return open_clip.get_tokenizer(model_name)
    folder = Path(weights).parent
    if not any((folder / f).is_file() for f in TOKENIZER_FILES[:2]):
        info = next((m for m in LANGUAGE_MODELS.values() if m.model == model_name), None)
        where = info.source if info else f"the Hugging Face repo {text['hf_tokenizer_name']}"
        raise FileNotFoundError(f"{folder}: no tokenizer files for {model_name} ({' / '.join(TOKENIZER_FILES[:2])} "
                                f"beside the weights; get them from {where}; see ckpts/README.md)")
    from open_clip.tokenizer import HFTokenizer

    try:
        return HFTokenizer(str(folder), context_length=text.get("context_length", 77),
                           **text.get("tokenizer_kwargs", {}))
    except Exception as e:  # transformers missing, or files it cannot read
        raise WeightsError(f"{folder}: cannot load the {model_name} tokenizer ({unreadable_weights(e)}); "
                           f"needs the transformers package (pip install -e '.[preprocess]')") from None


class WeightsError(ValueError):
    """A weights file exists but cannot be used (unreadable, or not the named architecture)."""


def default_ckpt_dir() -> Path:
    """``$CKPT_DIR`` if set, else ``<repo>/ckpts``."""
    env = os.environ.get("CKPT_DIR")
    return Path(env) if env else REPO / "ckpts"


def checkpoint_dir(ckpt_dir=None) -> Path:
    """The weights folder (``ckpt_dir``, else ``default_ckpt_dir()``); a path that is a file is an
    error naming it (not a "weights not found" inside it)."""
    given = ckpt_dir is not None
    d = Path(ckpt_dir) if given else default_ckpt_dir()
    what = "--ckpt_dir" if given else ("$CKPT_DIR" if os.environ.get("CKPT_DIR") else "the default weights folder")
    if d.exists() and not d.is_dir():
        raise ValueError(f"{d}: {what} is a file, not a folder: give the folder that holds the weights "
                         f"(see ckpts/README.md), or name a weights file with --sam_checkpoint / --clip_weights")
    return d  # a missing folder: the lookup in it names the missing weights file and where to get it


def _missing(path: Path, what: str, source: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} weights not found: {path} (download it from {source}; "
                             f"see ckpts/README.md; nothing is fetched automatically)")


def find_sam_checkpoint(model_type: str, ckpt_dir=None, path: Union[str, Path, None] = None) -> Path:
    """The SAM ``state_dict`` file: ``path`` if given, else ``<ckpt_dir>/<official name>``."""
    info = SAM_CHECKPOINTS.get(model_type)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise _missing(p, f"SAM {model_type}", info.source if info else SAM_PAGE)
        return p
    if info is None:
        raise FileNotFoundError(f"SAM model type {model_type!r} has no default checkpoint file "
                                f"(known: {sorted(SAM_CHECKPOINTS)}); pass --sam_checkpoint <file>")
    p = checkpoint_dir(ckpt_dir) / info.name
    if not p.is_file():
        raise _missing(p, f"SAM {model_type}", f"{info.source} (listed on {SAM_PAGE})")
    return p


def find_openclip_weights(ckpt_dir=None, path: Union[str, Path, None] = None,
                          model: str = DEFAULT_CLIP_MODEL) -> Path:
    """The open_clip weights of ``model``: ``path`` if given (absolute, or relative to ``ckpt_dir``
    when it is a bare name found there), else the first of ``OPENCLIP_FILES``' names present in
    ``model_weights_dir(model, ckpt_dir)``, then in the weights folder itself (the sha256 recorded
    in a scene's manifest tells a wrong file apart, scene/provenance.py)."""
    info = next((m for m in LANGUAGE_MODELS.values() if m.model == model), None)
    page = info.source if info else OPENCLIP_PAGE
    if path is not None:
        p = Path(path)
        d = Path(ckpt_dir if ckpt_dir is not None else default_ckpt_dir())
        if not p.is_file() and not p.is_absolute() and (d / p).is_file():
            p = d / p
        if not p.is_file():
            raise _missing(p, f"OpenCLIP {model}", page)
        return p
    d = model_weights_dir(model, ckpt_dir)
    for folder in dict.fromkeys([d, checkpoint_dir(ckpt_dir)]):   # then the folder itself, as before
        for f in OPENCLIP_FILES:
            if (folder / f.name).is_file():
                return folder / f.name
    names = " or ".join(f.name for f in OPENCLIP_FILES)
    what = f"OpenCLIP ViT-B-16 ({DEFAULT_CLIP_TAG})" if model == DEFAULT_CLIP_MODEL else f"open_clip {model}"
    raise FileNotFoundError(f"{what} weights not found: neither {names} is in {d} (download one from "
                            f"{page}; see ckpts/README.md; nothing is fetched automatically)")


_SHA_CACHE: dict[tuple, str] = {}


def unreadable_weights(e: BaseException) -> str:
    """Why a weights file did not load, in a few words; never torch's advice to retry with
    ``weights_only=False`` (that unpickles arbitrary code from a file of unknown origin)."""
    from scene.gaussian_model import describe_torch_load_error

    text = str(e)
    if "weights_only" in text or "Weights only" in text or "zip archive" in text or isinstance(e, EOFError):
        return f"not a valid checkpoint file: {describe_torch_load_error(e)}"
    first = " ".join(text.strip().splitlines()[0].split())[:200] if text.strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def sha256_file(path: Union[str, Path], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file; cached per (resolved path, size, mtime) within the process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(p, chunk)
    return _SHA_CACHE[key]


def offline_hub() -> None:
    """Belt and braces: forbid Hugging Face hub downloads in this process (we always pass a file path)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # huggingface_hub reads the variable at import time; update its constant too if loaded
        import huggingface_hub.constants as hc
        hc.HF_HUB_OFFLINE = True
    except Exception:  # not installed / layout changed: the env variable is all we can do
        pass


# ---------------------------------------------------------------------------------------------
# OpenCLIP: device, precision, loading (the text tower for queries, the image tower for preprocessing)
def pick_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: fp16 on CUDA (LangSplat), fp32 elsewhere; else ``"fp16"`` / ``"fp32"``."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be auto, fp16 or fp32, got {precision!r}")
    return precision


def load_openclip(model_name: str, weights: Union[str, Path], device, precision: str = "fp32"):
    """``open_clip.create_model(model_name, pretrained=<weights file>)`` in eval mode on ``device``.

    Errors name the file: unknown model config -> ValueError; a file that is unreadable or does
    not match the architecture -> :class:`WeightsError`."""
    offline_hub()
    import open_clip

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"OpenCLIP weights not found: {weights} (download from {OPENCLIP_PAGE})")
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"unknown OpenCLIP model {model_name!r}: not an open_clip config "
                         f"(e.g. ViT-B-16; see open_clip.list_models())")
    try:
        model = open_clip.create_model(model_name, pretrained=str(weights.resolve()), precision=precision,
                                       device=torch.device(device))
    except Exception as e:  # RuntimeError from load_state_dict, pickle/safetensors errors
        info = next((m for m in LANGUAGE_MODELS.values() if m.model == model_name), None)
        want = (f"the {info.model} {info.tag} file from {info.source}" if info else
                f"{model_name} weights (LangSplat's model: the ViT-B-16 laion2b_s34b_b88k file from {OPENCLIP_PAGE})")
        raise WeightsError(f"{weights}: does not load into OpenCLIP {model_name} ({unreadable_weights(e)} ...); "
                           f"expected {want}") from None
    return model.eval()


def embed_dim(model) -> int:
    """Output width of ``model.encode_image`` / ``encode_text`` (512 for ViT-B-16)."""
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    out = getattr(getattr(model, "visual", None), "output_dim", None)
    if out is None:
        raise ValueError("cannot tell the embedding width of this OpenCLIP model")
    return int(out)


# ---------------------------------------------------------------------------------------------
# SAM
# extra SAM architectures: model type -> builder of an untrained ``Sam`` (tests register tiny ones)
SAM_BUILDERS: dict[str, Callable] = {}


def sam_model_types() -> list[str]:
    return sorted(set(SAM_CHECKPOINTS) | set(SAM_BUILDERS))


def _sam_builder(model_type: str) -> Callable:
    if model_type in SAM_BUILDERS:
        return SAM_BUILDERS[model_type]
    if model_type not in SAM_CHECKPOINTS:
        raise ValueError(f"unknown SAM model type {model_type!r}; choose one of {sam_model_types()}")
    from segment_anything import sam_model_registry  # the preprocess extra; the query never needs it

    return partial(sam_model_registry[model_type], checkpoint=None)


def load_sam(model_type: str, checkpoint, device):
    """Builds SAM ``model_type`` and loads the ``state_dict`` file ``checkpoint`` (strict): a
    ``segment_anything.modeling.Sam`` in eval mode on ``device``."""
    builder = _sam_builder(model_type)
    info = SAM_CHECKPOINTS.get(model_type)
    where = info.source if info else SAM_PAGE
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors of a truncated or foreign file
        # never torch's "re-run with weights_only=False" advice: that would unpickle an untrusted file
        raise WeightsError(f"{checkpoint}: cannot read as a SAM {model_type} checkpoint, "
                           f"{unreadable_weights(e)}; re-download it from {where}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{checkpoint}: cannot read as a SAM {model_type} checkpoint, it holds a "
                           f"{type(state).__name__}, not a state_dict; re-download it from {where}")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    sam = builder()
    try:
        sam.load_state_dict(state, strict=True)
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise WeightsError(f"{checkpoint}: does not load into SAM {model_type} ({first} ...); it is not the "
                           f"{model_type} checkpoint (get it from {where})") from None
    return sam.to(device).eval()
