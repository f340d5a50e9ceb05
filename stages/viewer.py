"""The interactive viewer's state, without a GUI: what ``viewer.py``'s text box, clicks and buttons call.

``ViewerSession(cfg, run_dir, device)`` loads the run's query model once (``stages/query.py``), then:

* ``text(query)``: the text query through ``select_texts``, the function ``query.py`` answers with (the
  same selection for the same config); the rescaled relevancy is kept for the heat map;
* ``click(camera, x, y, action)``: the point prompt (``stages/prompts.point_selection``) of pixel (x, y)
  of any camera (the browser's); ``action`` = ``set`` (a new selection), ``add`` (union) or ``remove``;
* ``colors(show)``: per-Gaussian RGB and opacity to display: ``highlight`` (the selection in
  ``HIGHLIGHT``, the rest dimmed), ``heatmap`` (the relevancy of the last text query) or ``plain``;
* ``export()`` / ``remove()``: the selection as a 3DGS PLY (``queries/<name>.ply``) / taken out of the
  scene shown, which is written as ``queries/<name>_removed.ply``; both also record the selection
  (``queries/<name>.npy`` + ``index.json``, mode ``viewer``); a name already used gets ``_2``, ``_3``...;
* ``reset()``: nothing selected, nothing removed.

Queries and clicks answer on the scene as shown: after a removal, the removed Gaussians are out of the
relevancy rescale and cannot be clicked. Every public method holds one lock, so the GUI's callback
threads never run two torch jobs at once.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import torch

from arguments import Config
from arguments.config import apply_overrides
from gaussian_renderer.projection import covariance_3d
from scene.errors import StageError, UserError
from scene.gaussian_model import sh_to_rgb
from scene.names import safe_stem
from scene.selections import queries_dir, read_index, record_selections

from .edit import export_selection, remove_selection
from .prompts import point_selection
from .query import QueryModel, build_encoder, load_query_model, select_texts

HIGHLIGHT = (1.0, 0.0, 1.0)   # magenta: rare in real and generated scenes
HIGHLIGHT_MIX = 0.7           # selected colour = (1 - mix) rgb + mix HIGHLIGHT
DIM_GREY, DIM_MIX, DIM_OPACITY = 0.6, 0.7, 0.35   # the rest: towards grey, fainter
SHOW = ("highlight", "heatmap", "plain")
ACTIONS = ("set", "add", "remove")
# heat-map stops (relevancy 0, .25, .5, .75, 1): blue, cyan, green, yellow, red
HEAT_STOPS = np.array([[0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=np.float32)


def splat_arrays(params: dict) -> dict:
    """A Gaussian dict -> float32 numpy arrays for a splat viewer: ``centers`` [N, 3], ``covariances``
    [N, 3, 3] (``R S S^T R^T``), ``rgbs`` [N, 3] (the SH DC colour, clipped) and ``opacities`` [N, 1]."""
    with torch.no_grad():
        cov = covariance_3d(params["quats"], torch.exp(params["scales"]))
        rgb = sh_to_rgb(params["sh0"][:, 0]).clamp(0, 1)
        out = {"centers": params["means"], "covariances": cov, "rgbs": rgb,
               "opacities": torch.sigmoid(params["opacities"])[:, None]}
        return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


def heat_colors(score: np.ndarray) -> np.ndarray:
    """[N] relevancy in [0, 1] (clipped) -> [N, 3] colours, linear between ``HEAT_STOPS``."""
    s = np.clip(np.nan_to_num(np.asarray(score, dtype=np.float32)), 0.0, 1.0) * (len(HEAT_STOPS) - 1)
    i = np.minimum(s.astype(int), len(HEAT_STOPS) - 2)
    f = (s - i)[:, None]
    return (1 - f) * HEAT_STOPS[i] + f * HEAT_STOPS[i + 1]


def _subset(qm: QueryModel, keep: torch.Tensor) -> QueryModel:
    """The query model of the Gaussians ``keep`` (index tensor) only. Its cache starts afresh (cluster
    labels and distances are of the whole model), except the per-Gaussian mask coverage, cut to ``keep``."""
    cache = {"coverage": qm.cache["coverage"][keep.to(qm.cache["coverage"].device)]} if "coverage" in qm.cache else {}
    return dataclasses.replace(qm, params={k: v[keep] for k, v in qm.params.items()}, lang=qm.lang.subset(keep),
                               feats=qm.feats[keep], opacity=qm.opacity[keep], cache=cache)


class ViewerSession:
    """See the module docstring. ``progress(fraction, message)`` is told how loading goes."""

    def __init__(self, cfg: Config, run_dir: Path, device, progress=None):
        progress = progress or (lambda f, m: None)
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self._lock = threading.Lock()
        progress(0.05, f"loading {self.run_dir / 'instance'} and the language field")
        self.full = load_query_model(cfg, self.run_dir, device)
        self.n = int(self.full.feats.shape[0])
        progress(0.6, "loading the text encoder")
        self.encoder, self.encoder_info = build_encoder(cfg, self.run_dir)
        progress(0.8, "preparing the splats")
        self.base = splat_arrays(self.full.params)
        self.removed = np.zeros(self.n, dtype=bool)
        self._shown = self.full
        self._keep = torch.arange(self.n, device=self.full.feats.device)
        self.reset()
        progress(1.0, f"{self.n} Gaussians loaded")

    def start_camera(self):
        """The scene's first view, where a browser starts (None when the scene's cameras cannot be read:
        a run whose scene folder moved still opens, at the viewer's default camera)."""
        if not hasattr(self, "_start_camera"):
            from scene.dataset import load_scene_from_config

            try:
                cams = load_scene_from_config(self.cfg.data, -1).all_cameras
                self._start_camera = min(cams, key=lambda c: c.uid) if cams else None
            except (OSError, ValueError, UserError) as e:
                print(f"[viewer] the scene's cameras cannot be read ({e}): starting at the default view")
                self._start_camera = None
        return self._start_camera

    # ---- state ----------------------------------------------------------------------------------
    def reset(self) -> str:
        """Nothing selected, nothing removed."""
        self.selection = np.zeros(self.n, dtype=bool)
        self.scores = None           # [N] rescaled relevancy of the last text query (removed: 0)
        self.last_text = None        # the text query the selection is, while no click changed it
        self.steps: list = []        # how the selection was made (recorded with an export)
        if self.removed.any():
            self.removed[:] = False
            self._set_shown()
        return self.status("reset")

    def _set_shown(self) -> None:
        self._keep = torch.from_numpy(np.flatnonzero(~self.removed)).to(self.full.feats.device)
        self._shown = self.full if not self.removed.any() else _subset(self.full, self._keep)

    def _to_full(self, sel_shown: torch.Tensor) -> np.ndarray:
        out = np.zeros(self.n, dtype=bool)
        out[self._keep.cpu().numpy()] = sel_shown.cpu().numpy()
        return out

    def status(self, what: str, seconds: float | None = None) -> str:
        """One line: what happened, the counts and the time it took."""
        line = f"{what}: {int(self.selection.sum())} of {int((~self.removed).sum())} Gaussians selected"
        if self.removed.any():
            line += f" ({int(self.removed.sum())} removed)"
        return line + (f" · {1000 * seconds:.1f} ms" if seconds is not None else "")

    def set_options(self, mode: str | None = None, tau: float | None = None) -> None:
        """``query.mode`` / ``query.score_thresh`` (τ), checked as ``--set`` checks them."""
        sets = ([f"query.mode={mode}"] if mode is not None else []) + \
               ([f"query.score_thresh={float(tau)!r}"] if tau is not None else [])
        with self._lock:
            apply_overrides(self.cfg, sets)

    # ---- prompts --------------------------------------------------------------------------------
    def text(self, query: str) -> str:
        """The text query -> the selection (replaces the last one); returns the status line."""
        query = (query or "").strip()
        if not query:
            raise StageError("type a query first (e.g. a category of the scene)")
        with self._lock:
            t0 = time.time()
            (sel, _, score), = select_texts(self.cfg, self._shown, self.encoder, [query], return_scores=True)
            self.selection = self._to_full(sel)
            full_score = np.zeros(self.n, dtype=np.float32)
            full_score[self._keep.cpu().numpy()] = score.float().cpu().numpy()
            self.scores, self.last_text = full_score, query
            self.steps = [{"text": query, "mode": self.cfg.query.mode, "tau": self.cfg.query.score_thresh}]
            return self.status(f"{query!r} ({self.cfg.query.mode})", time.time() - t0)

    def click(self, camera, x: float, y: float, action: str = "set") -> str:
        """The point prompt of pixel (x, y) of ``camera``: ``set`` | ``add`` | ``remove`` its instance."""
        if action not in ACTIONS:
            raise ValueError(f"click action {action!r}: expected one of {ACTIONS}")
        x = min(max(float(x), 0.0), camera.width - 1e-3)     # a click on the canvas edge
        y = min(max(float(y), 0.0), camera.height - 1e-3)
        with self._lock:
            t0 = time.time()
            region, info = point_selection(self.cfg, self._shown, camera, [[x, y]])
            region = self._to_full(region)
            if action == "set":
                self.selection = region
            elif action == "add":
                self.selection = self.selection | region
            else:
                self.selection = self.selection & ~region
            self.last_text = None
            self.steps = ([] if action == "set" else self.steps) + [
                {"click": action, "pixel": [round(x, 2), round(y, 2)], "size": [camera.width, camera.height],
                 "R": np.round(camera.R, 6).tolist(), "t": np.round(camera.t, 6).tolist()}]
            seed = info["seeds"][0]["gaussian"]
            return self.status(f"click {action} (instance of Gaussian {int(self._keep[seed])})", time.time() - t0)

    # ---- display --------------------------------------------------------------------------------
    def colors(self, show: str = "highlight") -> tuple[np.ndarray, np.ndarray]:
        """(rgb [N, 3], opacity [N, 1]) float32 to display; removed Gaussians get opacity 0."""
        if show not in SHOW:
            raise ValueError(f"show {show!r}: expected one of {SHOW}")
        rgb, alpha = self.base["rgbs"].copy(), self.base["opacities"].copy()
        if show == "heatmap" and self.scores is not None:
            rgb = heat_colors(self.scores)
        elif show == "highlight" and self.selection.any():
            s, rest = self.selection, ~self.selection
            rgb[s] = (1 - HIGHLIGHT_MIX) * rgb[s] + HIGHLIGHT_MIX * np.asarray(HIGHLIGHT, dtype=np.float32)
            rgb[rest] = (1 - DIM_MIX) * rgb[rest] + DIM_MIX * DIM_GREY
            alpha[rest] *= DIM_OPACITY
        alpha[self.removed] = 0.0
        return rgb.astype(np.float32), alpha.astype(np.float32)

    # ---- outputs --------------------------------------------------------------------------------
    def _free_name(self) -> str:
        base = safe_stem(self.last_text) if self.last_text else "viewer_selection"
        known = set(read_index(self.run_dir, missing_ok=True).get("queries", {}))
        qdir = queries_dir(self.run_dir)
        for k in range(1, 10_000):
            name = base if k == 1 else f"{base}_{k}"
            if name not in known and not any((qdir / f"{name}{s}").exists()
                                             for s in (".npy", ".ply", "_removed.ply")):
                return name
        raise StageError(f"{qdir}: no free name for {base!r}")

    def _record(self, name: str, sel: np.ndarray, kind: str) -> None:
        record = {"mode": "viewer", "prompt": {"steps": self.steps, "action": kind}, "seconds": 0.0}
        record_selections(self.run_dir, self.full.model, self.full.d, {name: (sel, record)})

    def export(self) -> tuple[Path, str]:
        """The selection as ``queries/<name>.ply`` (a 3DGS PLY with its instance features)."""
        from scene.rundir import RunLock

        with self._lock:
            if not self.selection.any():
                raise StageError("nothing is selected: query or click an object first")
            name = self._free_name()
            with RunLock(self.run_dir, "viewer.py"):
                path = export_selection(queries_dir(self.run_dir) / f"{name}.ply", self.full.params,
                                        self.selection)
                self._record(name, self.selection, "export")
            return path, self.status(f"exported {path.name}")

    def remove(self) -> tuple[Path, str]:
        """Take the selection out of the scene shown; the scene without every removed Gaussian so far
        -> ``queries/<name>_removed.ply`` (a standard 3DGS PLY)."""
        from scene.rundir import RunLock

        with self._lock:
            if not self.selection.any():
                raise StageError("nothing is selected: query or click an object first")
            name = self._free_name()
            removed = self.removed | self.selection
            with RunLock(self.run_dir, "viewer.py"):
                path = remove_selection(queries_dir(self.run_dir) / f"{name}_removed.ply", self.full.params,
                                        removed)
                self._record(name, self.selection, "remove")
            self.removed = removed
            self.selection = np.zeros(self.n, dtype=bool)
            self.scores, self.last_text, self.steps = None, None, []
            self._set_shown()
            return path, self.status(f"removed -> {path.name}")
