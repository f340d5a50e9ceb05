"""Atomic file writes: every output is written to a temporary name beside it and renamed into place,
so an interrupted write never leaves a half-written file under the final name. Also the one file hash
(``file_sha256``) the run dir, the weights lookup and the renders' records share."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix, so writers that pick a format from it keep
    working); on success it replaces ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def torch_save(obj, path) -> None:
    """``torch.save`` through a file object: torch names the zip records after a path's file name (the
    temporary one, with a pid in it), but a file object's are always ``archive/``, so the same object
    gives the same bytes in every run."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def np_save(path, arr) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        np.save(tmp, arr)


def png_save(path, arr) -> None:
    """uint8 [H, W] (grayscale) or [H, W, 3] (RGB) array -> PNG."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp)


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
