"""The run directory: one folder per (tag, scene) holding every stage's outputs.

```
<run dir>/
  .lock                       held (flock) by the one process training / querying into the run
  config.yaml                 the resolved config of the latest stage run (+ git commit, argfiles)
  <stage>/config.yaml         the config that stage ran with (checked on resume) + its input fingerprints
  <stage>/done.json           written last: the stage finished (summary numbers + output fingerprints)
  rgb/point_cloud.ply  rgb/ckpt.pt  rgb/eval.json  ...
```
A stage is "finished" iff its ``done.json`` exists and its recorded outputs are still the files on
disk. Fingerprints are sha256 of the content (size and mtime only decide whether a recorded hash can
be reused), so a copied or moved run dir stays finished. Every stage records the fingerprint of the
scene's ``sparse/0`` model and of its predecessor's outputs: a stage runs only on a finished
predecessor of the same scene, and a retrained predecessor makes everything after it stale.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
from pathlib import Path

from arguments import Config, read_saved_config, save_config, to_dict
from .atomic import file_sha256, write_json
from .errors import StageError

REPO_ROOT = Path(__file__).resolve().parent.parent
__all__ = ["StageError", "RunLock", "begin_stage", "mark_done", "require_finished", "check_fresh",
           "scene_fingerprint", "file_sha256", "fingerprint"]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------
# one writer per run dir
class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``, held for the life of the process (or the ``with``
    block). The kernel drops it when its holder dies, so a lock left by a killed process is simply
    taken over; the file holds the holder's pid for the message of whoever is refused."""

    def __init__(self, run_dir: Path, what: str):
        self.path = Path(run_dir) / ".lock"
        self.what = what
        self._fh = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StageError(f"{self.path.parent} is in use by {holder}: wait for it to finish, or stop it "
                             f"(a lock left by a killed process is taken over automatically)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} ({self.what})\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------------------------------
# content fingerprints
def fingerprint(files: dict, known: dict | None = None) -> dict:
    """``{key: path}`` -> ``{key: {size, mtime_ns, sha256}}``. A hash in ``known`` is reused when the
    file's size and mtime are unchanged (so each file is hashed once, not on every command)."""
    out = {}
    for key, p in sorted(files.items()):
        st = Path(p).stat()
        old = (known or {}).get(key)
        if isinstance(old, dict) and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            sha = old["sha256"]
        else:
            sha = file_sha256(Path(p))
        out[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    return out


def _changed(old: dict, new: dict) -> list[str]:
    """Keys whose content differs (hashes compared; size/mtime alone never count)."""
    def sha(d, k):
        v = d.get(k)
        return v.get("sha256") if isinstance(v, dict) else v
    return sorted(k for k in set(old) | set(new) if sha(old, k) != sha(new, k))


def _list(keys: list[str]) -> str:
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def scene_files(source_path) -> dict:
    """The camera model that identifies a scene: COLMAP's ``sparse/0/*.bin|txt``, or for a Blender /
    NeRF scene without it (scene/blender.py) ``transforms_train.json``, ``transforms_test.json`` and
    ``points3d.ply`` (those present)."""
    root = Path(source_path)
    sparse = root / "sparse" / "0"
    if not sparse.is_dir() and (root / "transforms_train.json").is_file():
        names = ("transforms_train.json", "transforms_test.json", "points3d.ply")
        return {n: root / n for n in names if (root / n).is_file()}
    return {f"sparse/0/{p.name}": p for p in sorted(sparse.glob("*")) if p.suffix in (".bin", ".txt") and p.is_file()}


def scene_fingerprint(source_path, known: dict | None = None) -> dict:
    return fingerprint(scene_files(source_path), known)


# ---------------------------------------------------------------------------------------------
# stage records
def _done_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage / "done.json"


def stage_done(run_dir: Path, stage: str) -> bool:
    return _done_path(run_dir, stage).is_file()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StageError(f"{path}: unreadable ({e}); redo that stage with --force") from None


def mark_done(run_dir: Path, stage: str, summary: dict, outputs: dict) -> None:
    """Record the stage as finished, with the fingerprints of the ``outputs`` ``{key: path}`` that
    later stages read (their content identifies this run of the stage)."""
    saved, meta = read_saved_config(Path(run_dir) / stage / "config.yaml")
    write_json(_done_path(run_dir, stage), {**summary, "outputs": fingerprint(outputs),
                                            "scene": meta.get("scene", {})})


def require_finished(run_dir: Path, stage: str, needed_by: str) -> dict:
    """The done record of ``stage`` (which ``needed_by`` builds on); refuses an unfinished stage and
    outputs that were replaced after it finished."""
    run_dir = Path(run_dir)
    done = _done_path(run_dir, stage)
    if not done.is_file():
        state = "did not finish" if (run_dir / stage).exists() else "has not run"
        raise StageError(f"{run_dir / stage}: the '{stage}' stage {state}, and '{needed_by}' needs it: "
                         f"run `python train.py --stage {stage} -m {run_dir}` first")
    rec = _read_json(done)
    outs = rec.get("outputs", {})
    files = {k: run_dir / k for k in outs}
    missing = [k for k, p in files.items() if not p.is_file()]
    if missing or not outs:
        raise StageError(f"{done}: the outputs of '{stage}' are missing ({_list(missing) or 'no record'}); "
                         f"redo it with `python train.py --stage {stage} -m {run_dir} --force`")
    now = fingerprint(files, outs)
    changed = _changed(outs, now)
    if changed:
        raise StageError(f"{run_dir / stage}: {_list(changed)} changed after the '{stage}' stage finished; "
                         f"redo it with `python train.py --stage {stage} -m {run_dir} --force`")
    if now != outs:  # same content, new size/mtime records (a copied run dir): hash once, not every time
        rec["outputs"] = now
        write_json(done, rec)
    return rec


def check_fresh(run_dir: Path, stage: str, predecessor: str, needed_by: str) -> dict:
    """``stage`` finished and was made from the current outputs of ``predecessor`` (else it is stale)."""
    rec = require_finished(run_dir, stage, needed_by)
    pred = require_finished(run_dir, predecessor, stage)
    _, meta = read_saved_config(Path(run_dir) / stage / "config.yaml")
    used = {k: v for k, v in meta.get("inputs", {}).items() if k in pred["outputs"]}
    if _changed(used, pred["outputs"]):
        raise StageError(f"{Path(run_dir) / stage}: stale, the '{predecessor}' stage was redone after '{stage}' "
                         f"ran; redo it with `python train.py --stage {stage} -m {run_dir}`")
    return rec


def _diff(a, b, prefix=""):
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        out.append(f"{prefix[:-1]}: {a!r} -> {b!r}")
    return out


def begin_stage(run_dir: Path, stage: str, cfg: Config, sections: list[str], meta: dict,
                force: bool = False, predecessor: str | None = None, inputs: dict | None = None) -> bool:
    """Check everything, then prepare ``<run_dir>/<stage>`` and record the config.

    Returns True when the stage must run (fresh or resumable) and False when it already finished
    (and ``force`` is not set). In order, before anything is deleted:
    1. a run dir that holds a run of another scene is refused (``--force`` retrains this stage on
       the new scene); the predecessor must be finished and of the same scene, whatever ``force``;
    2. when the stage's inputs (the predecessor's outputs, ``inputs`` ``{key: path}``) changed since it
       ran, its outputs and checkpoint are stale and it starts over;
    3. otherwise a stage that ran with other settings in ``sections`` is refused (a checkpoint trained
       under other settings must not be silently mixed in).
    """
    run_dir = Path(run_dir)
    sdir = run_dir / stage
    saved = sdir / "config.yaml"
    old_cfg, old_meta = read_saved_config(saved) if saved.is_file() else (None, {})
    scene_fp = scene_fingerprint(cfg.data.source_path, old_meta.get("scene"))
    if not scene_fp:
        raise StageError(f"{cfg.data.source_path}: no COLMAP model in sparse/0 and no transforms_train.json")
    if old_cfg is not None and old_meta.get("scene") and _changed(old_meta["scene"], scene_fp) and not force:
        raise StageError(f"{run_dir}: its '{stage}' stage was trained on another scene ({old_cfg.data.source_path}, "
                         f"now {cfg.data.source_path}): use another -m run dir, or --force to retrain it here")
    pred_outputs = {}
    if predecessor:
        pred = require_finished(run_dir, predecessor, stage)
        if pred.get("scene") and _changed(pred["scene"], scene_fp):
            raise StageError(f"{run_dir / predecessor}: trained on another scene than {cfg.data.source_path}: "
                             f"use another -m run dir, or retrain '{predecessor}' on this scene first")
        pred_outputs = pred["outputs"]
    in_fp = {**pred_outputs, **fingerprint(inputs or {}, old_meta.get("inputs"))}
    if old_cfg is not None and not force:
        changed = _changed(old_meta.get("inputs", {}), in_fp)
        if changed:
            print(f"[{stage}] its inputs changed since it ran ({_list(changed)}): starting it over")
            force = True
    if force and sdir.exists():
        for f in ("done.json", "ckpt.pt"):
            (sdir / f).unlink(missing_ok=True)
    if old_cfg is not None and not force:
        new_d, old_d = to_dict(cfg), to_dict(old_cfg)
        for d in (new_d, old_d):  # a moved scene is the same scene: its identity is the fingerprint above
            d["data"].pop("source_path", None)
        changes = []
        for s in sections:
            changes += _diff(old_d.get(s), new_d.get(s), f"{s}.")
        if changes:
            state = "a finished" if stage_done(run_dir, stage) else "an unfinished"
            raise StageError(
                f"{saved}: {state} '{stage}' run with other settings is here "
                f"({'; '.join(changes[:5])}). Use --force to redo it, or another -m run dir."
            )
    full_meta = {"git_commit": git_commit(), "stage": stage, **meta, "scene": scene_fp, "inputs": in_fp}
    # the run-level config is the latest invocation's (what query/render read), also when the stage is skipped
    save_config(cfg, run_dir / "config.yaml", meta=full_meta)
    if stage_done(run_dir, stage) and not force:
        require_finished(run_dir, stage, stage)  # its outputs are intact
        if old_cfg is not None and old_meta.get("inputs") != in_fp or old_meta.get("scene") != scene_fp:  # refreshed mtimes only
            save_config(old_cfg, saved, meta={**old_meta, "scene": scene_fp, "inputs": in_fp})
        return False
    sdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved, meta=full_meta)
    return True
