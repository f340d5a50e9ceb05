"""The run directory: one folder per (tag, scene) holding every stage's outputs.

```
<run dir>/
  config.yaml                 the resolved config of the latest stage run (+ git commit, argfiles)
  <stage>/config.yaml         the config that stage ran with (checked on resume)
  <stage>/done.json           written last: the stage finished (summary numbers inside)
  rgb/point_cloud.ply  rgb/ckpt.pt  rgb/eval.json  ...
```
A stage is "finished" iff its ``done.json`` exists; everything else in its folder is either a
final product or a resumable checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from arguments import Config, read_saved_config, save_config, to_dict

REPO_ROOT = Path(__file__).resolve().parent.parent


class StageError(RuntimeError):
    """A stage cannot run as asked (missing predecessor, conflicting earlier run, ...)."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"run.device={name!r} but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, data) -> None:
    """Atomic JSON write (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def stage_done(run_dir: Path, stage: str) -> bool:
    return (Path(run_dir) / stage / "done.json").is_file()


def mark_done(run_dir: Path, stage: str, summary: dict) -> None:
    write_json(Path(run_dir) / stage / "done.json", summary)


def _diff(a, b, prefix=""):
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        out.append(f"{prefix[:-1]}: {a!r} -> {b!r}")
    return out


def fingerprint(paths) -> dict:
    """Size and modification time of a stage's input files (what its outputs were made from)."""
    out = {}
    for p in paths:
        p = Path(p)
        st = p.stat()
        out[f"{p.parent.name}/{p.name}"] = [st.st_size, st.st_mtime_ns]  # run-dir relative: runs may share stages
    return out


def begin_stage(run_dir: Path, stage: str, cfg: Config, sections: list[str], meta: dict,
                force: bool = False, inputs=()) -> bool:
    """Prepare ``<run_dir>/<stage>`` and record the config.

    Returns True when the stage must run (fresh or resumable) and False when it already finished
    (and ``force`` is not set). A resumable stage whose relevant config ``sections`` changed since
    it started is refused (a checkpoint trained under other settings must not be silently mixed in).
    ``inputs`` are the predecessor's files: when they changed since this stage ran (a retrained
    predecessor), the stage's outputs and checkpoint are stale and it starts over.
    """
    run_dir = Path(run_dir)
    sdir = run_dir / stage
    saved = sdir / "config.yaml"
    fp = fingerprint(inputs)
    if saved.is_file() and not force:
        _, old_meta = read_saved_config(saved)
        old_fp = old_meta.get("inputs", fp)
        if old_fp != fp:
            changed = sorted(k for k in set(old_fp) | set(fp) if old_fp.get(k) != fp.get(k))
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            print(f"[{stage}] its inputs changed since it ran ({', '.join(changed[:3])}{more}): starting it over")
            force = True
    if force and sdir.exists():
        for f in ("done.json", "ckpt.pt"):
            (sdir / f).unlink(missing_ok=True)
    if saved.is_file() and not force:
        old, _ = read_saved_config(saved)
        new_d, old_d = to_dict(cfg), to_dict(old)
        changes = []
        for s in sections:
            changes += _diff(old_d.get(s), new_d.get(s), f"{s}.")
        if changes:
            state = "a finished" if stage_done(run_dir, stage) else "an unfinished"
            raise StageError(
                f"{saved}: {state} '{stage}' run with other settings is here "
                f"({'; '.join(changes[:5])}). Use --force to redo it, or another -m run dir."
            )
    full_meta = {"git_commit": git_commit(), "stage": stage, **meta, "inputs": fp}
    # the run-level config is the latest invocation's (what query/render read), also when the stage is skipped
    save_config(cfg, run_dir / "config.yaml", meta=full_meta)
    if stage_done(run_dir, stage) and not force:
        return False
    sdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved, meta=full_meta)
    return True
