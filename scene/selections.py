"""The selection records of a run: what every query (of any kind of prompt) ends in.

```
<run>/queries/<safe name>.npy   bool [N]: the Gaussians of the object (N = the instance model's count)
<run>/queries/index.json        {"model": {<file>: sha256, ...}, "median_distance": d,
                                 "queries": {<text>: {"file", "n_selected", "mode", "text_encoder", "seconds"}}}
```
``<safe name>`` is ``scene.names.safe_stem(text)``. This module reads and writes both; rendering,
evaluation and export go through it (docs/formats.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import np_save, write_json
from .errors import StageError
from .names import safe_stem


def queries_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "queries"


def query_file(run_dir: Path, query: str) -> Path:
    return queries_dir(run_dir) / f"{safe_stem(query)}.npy"


def save_selection(run_dir: Path, query: str, selection: np.ndarray) -> Path:
    path = query_file(run_dir, query)
    np_save(path, np.asarray(selection, dtype=bool))
    return path


def load_selection(run_dir: Path, query: str, n_gaussians: int) -> np.ndarray:
    """bool [N] selection of ``query``; refused when missing or made for a model of another size."""
    path = query_file(run_dir, query)
    if not path.is_file():
        raise StageError(f"{path} not found: run the query step first")
    sel = np.load(path)
    if sel.shape[0] != n_gaussians:
        raise StageError(f"{path}: {sel.shape[0]} entries but the model has {n_gaussians} Gaussians "
                         f"(stale selection: re-run the query step)")
    return sel


def read_index(run_dir: Path, missing_ok: bool = False) -> dict:
    p = queries_dir(run_dir) / "index.json"
    if not p.is_file():
        if missing_ok:
            return {}
        raise StageError(f"{p} not found: run the query step first")
    return json.loads(p.read_text())


def write_index(run_dir: Path, model: dict, median_distance: float, queries: dict) -> None:
    write_json(queries_dir(run_dir) / "index.json",
               {"model": model, "median_distance": median_distance, "queries": queries})


def record_selections(run_dir: Path, model: dict, median_distance: float, entries: dict) -> dict:
    """Save ``{name: (bool [N] selection, record dict)}`` and add them to the index, which keeps the
    earlier entries of the same ``model`` (the hashes the selections depend on) and drops those of an
    older one. Each record gets ``file`` and ``n_selected``; returns the new records by name."""
    old = read_index(run_dir, missing_ok=True)
    index = old.get("queries", {}) if old.get("model") == model else {}
    if old.get("queries") and not index:
        print(f"[query] the model changed since {queries_dir(run_dir) / 'index.json'} was written: "
              f"earlier queries are dropped")
    for name, (sel, rec) in entries.items():
        sel = np.asarray(sel, dtype=bool)
        path = save_selection(run_dir, name, sel)
        index[name] = {"file": path.name, "n_selected": int(sel.sum()), **rec}
    write_index(run_dir, model, median_distance, index)
    return {name: index[name] for name in entries}
