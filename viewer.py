"""An interactive viewer of a trained run in the browser: type a query, click an object, export it.

    python viewer.py -m <run dir> [--port 8080] [--host 127.0.0.1]

Serves the run's Gaussians (instance/point_cloud.ply) with viser: the splats are drawn by the browser
(WebGL), so the server needs no GPU and a laptop can look at a remote run through an SSH tunnel:

    ssh -L 8080:localhost:8080 user@server      # then open http://localhost:8080 on the laptop

The text box runs the same query as query.py (stages/query.py select_texts, the run's config, the
mode and τ of the GUI); the selection is highlighted in magenta and the rest dimmed, or the relevancy
is shown as a heat map. A click selects the object under the pointer (the point prompt of
docs/method.md §5.6, in the browser's camera), shift-click adds one, alt- or ctrl-click removes one.
Export PLY writes <run>/queries/<name>.ply (the selection), Remove takes the selection out of the scene
and writes <run>/queries/<name>_removed.ply; both also record the selection (<name>.npy, index.json).
The server listens only on --host (loopback by default); Ctrl-C stops it.
"""
from __future__ import annotations

import stages  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import argparse
import socket
import sys
import threading
import traceback
from pathlib import Path

from arguments.cli import add_run_config_args, load_run_config, run_cli
from scene.errors import StageError, UserError
from scene.grounding import MODES
from scene.runtime import resolve_device, seed_everything

SHOW_LABELS = {"highlight": "highlight", "heat map": "heatmap", "plain": "plain"}
CLICK_ACTIONS = {None: "set", "shift": "add", "alt": "remove", "cmd/ctrl": "remove"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="run directory (instance + mapping stages done)")
    p.add_argument("--port", type=int, default=8080,
                   help="port to serve on (default 8080; 0 = any free port; a busy port: the next free one, "
                        "printed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only, reach it over SSH with "
                        "ssh -L; 0.0.0.0 opens it to the network)")
    add_run_config_args(p)
    return p


def check_listen(host: str, port: int) -> None:
    """Refuse an address this machine cannot listen on (viser would try port after port)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: must be in 0..65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
    except (OSError, socket.gaierror) as e:
        raise UserError(f"--host {host}: cannot listen on that address ({e.strerror or e})") from None


def check_run(run_dir: Path) -> None:
    for stage in ("instance", "mapping"):
        if not (run_dir / stage / "done.json").is_file():
            raise StageError(f"{run_dir}: the {stage} stage is not done (python train.py -m {run_dir}); the "
                             f"viewer shows a run with an instance field and its language mapping")


class Viewer:
    """A viser server showing one run; ``session`` (stages/viewer.ViewerSession) holds the state.
    ``start()`` serves and loads; ``stop()`` ends it. Usable in-process (the browser test does)."""

    def __init__(self, run_dir: Path, cfg, device, host: str = "127.0.0.1", port: int = 8080):
        self.run_dir, self.cfg, self.device, self.host, self.port = Path(run_dir), cfg, device, host, port
        self.session = None
        self.server = None
        self.ready = threading.Event()
        self.last_status = ""

    # ---- life ---------------------------------------------------------------------------------
    def start(self) -> "Viewer":
        import viser

        from stages.viewer import ViewerSession

        self.server = viser.ViserServer(host=self.host, port=self.port, label="COS3D viewer", verbose=False)
        self.port = self.server.get_port()
        self._build_gui()
        try:
            self.session = ViewerSession(self.cfg, self.run_dir, self.device, progress=self._progress)
        except BaseException:
            self.stop()
            raise
        self._add_splats()
        self.server.on_client_connect(self._place_camera)
        for client in self.server.get_clients().values():
            self._place_camera(client)
        for handle in self.controls:
            handle.disabled = False
        self.progress.visible = False
        self._set_status(f"ready: {self.session.n} Gaussians · type a query or click an object")
        self.ready.set()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- GUI ----------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        gui = self.server.gui
        q = self.cfg.query
        gui.add_markdown(f"**COS3D** · `{self.run_dir.name}`")
        self.progress = gui.add_progress_bar(0.0, animated=True)
        self.text = gui.add_text("Query", "", hint="a text query, e.g. a category of the scene")
        self.search = gui.add_button("Search", hint="run the text query")
        self.mode = gui.add_dropdown("Mode", MODES, initial_value=q.mode)
        self.tau = gui.add_slider("τ", min=0.0, max=1.0, step=0.01, initial_value=float(q.score_thresh),
                                  hint="query.score_thresh: seed threshold and region acceptance")
        self.show = gui.add_dropdown("Show", tuple(SHOW_LABELS), initial_value="highlight")
        gui.add_markdown("Click: select the object · shift-click: add · alt- or ctrl-click: remove")
        self.export = gui.add_button("Export PLY", hint="the selection -> <run>/queries/<name>.ply")
        self.remove = gui.add_button("Remove", hint="take the selection out; the rest -> queries/<name>_removed.ply")
        self.reset = gui.add_button("Reset", hint="nothing selected, nothing removed")
        self.status = gui.add_markdown("loading ...")
        self.controls = [self.text, self.search, self.mode, self.tau, self.show, self.export, self.remove, self.reset]
        for handle in self.controls:
            handle.disabled = True

        self.search.on_click(lambda _: self._guard(lambda: self.session.text(self.text.value)))
        self.mode.on_update(lambda _: self._guard(self._options))
        self.tau.on_update(lambda _: self._guard(self._options))
        self.show.on_update(lambda _: self._guard(lambda: None))
        self.export.on_click(lambda _: self._guard(lambda: self.session.export()[1]))
        self.remove.on_click(lambda _: self._guard(lambda: self.session.remove()[1]))
        self.reset.on_click(lambda _: self._guard(lambda: self.session.reset()))
        for modifier, action in CLICK_ACTIONS.items():
            self.server.scene.on_click(modifier=modifier)(
                lambda event, action=action: self._guard(lambda: self._click(event, action)))

    def _options(self):
        self.session.set_options(mode=self.mode.value, tau=self.tau.value)
        if self.session.last_text:         # a text selection follows its controls
            return self.session.text(self.session.last_text)
        return f"mode {self.mode.value}, τ {self.tau.value:g}: used by the next query"

    def _click(self, event, action: str) -> str:
        from scene.cameras import camera_from_pose
        from scene.colmap import qvec2rotmat

        cam = event.client.camera
        W, H = int(cam.image_width), int(cam.image_height)
        camera = camera_from_pose(qvec2rotmat(cam.wxyz), cam.position, float(cam.fov), W, H)
        x, y = event.screen_pos
        return self.session.click(camera, x * W, y * H, action)

    def _guard(self, fn) -> None:
        """Run a GUI action: its status line, or its error's message; the server keeps running."""
        if self.session is None:
            return
        try:
            line = fn()
        except (UserError, StageError, ValueError, KeyError) as e:
            line = f"⚠ {e.args[0] if isinstance(e, KeyError) and e.args else e}"
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down
            traceback.print_exc()
            line = f"⚠ internal error: {type(e).__name__}: {e}"
        self._redraw()
        if line is not None:
            self._set_status(line)

    def _set_status(self, line: str) -> None:
        self.last_status = line
        self.status.content = line

    def _progress(self, fraction: float, message: str) -> None:
        self.progress.value = 100.0 * fraction
        self._set_status(message)
        print(f"[viewer] {message}", flush=True)

    # ---- scene --------------------------------------------------------------------------------
    def _add_splats(self) -> None:
        b = self.session.base
        self.splats = self.server.scene.add_gaussian_splats("/gaussians", centers=b["centers"],
                                                            covariances=b["covariances"], rgbs=b["rgbs"],
                                                            opacities=b["opacities"])

    def _redraw(self) -> None:
        rgb, alpha = self.session.colors(SHOW_LABELS[self.show.value])
        b = self.session.base
        self.splats.set_gaussians(b["centers"], b["covariances"], rgb, alpha)

    def _place_camera(self, client) -> None:
        """Start each browser at the scene's first view, with that view's up direction."""
        import numpy as np

        cam = self.session.start_camera() if self.session is not None else None
        if cam is None:
            return
        c2w = cam.R.T
        with client.atomic():
            client.camera.up_direction = -c2w[:, 1]
            client.camera.fov = cam.fov_y
            client.camera.position = cam.center
            depth = float(np.dot(self.session.base["centers"].mean(0) - cam.center, c2w[:, 2]))
            client.camera.look_at = cam.center + c2w[:, 2] * max(depth, 1e-3)


def run(args) -> int:
    run_dir = Path(args.model_path)
    check_listen(args.host, args.port)
    check_run(run_dir)
    cfg = load_run_config(run_dir, args.config, args.overrides)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = resolve_device(cfg.run.device)
    viewer = Viewer(run_dir, cfg, device, host=args.host, port=args.port)
    viewer.start()
    if args.port and viewer.port != args.port:
        print(f"[viewer] port {args.port} is busy: serving on {viewer.port}")
    print(f"[viewer] {viewer.session.n} Gaussians of {run_dir} at {viewer.url}  (Ctrl-C stops it)")
    if args.host in ("127.0.0.1", "localhost", "::1"):
        print(f"[viewer] from another machine: ssh -L {viewer.port}:localhost:{viewer.port} <user>@<this host>, "
              f"then open http://localhost:{viewer.port}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("\n[viewer] stopped")
    finally:
        viewer.stop()
    return 0


def main(argv=None) -> int:
    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
