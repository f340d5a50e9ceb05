"""Drive viewer.py in a real headless Chromium: the browser test's driver, and docs/viewer.png's maker.

    python script/viewer_screenshot.py -m output/default/default --query "blue teapot" --out docs/viewer.png

Starts the viewer in this process on a free loopback port, opens it in Debian's Chromium through
Playwright (software WebGL: SwiftShader), types the query, presses Search, waits for the answer and
saves a screenshot. Needs ``apt-get install chromium`` and ``pip install playwright`` (no browser
download: the system Chromium is used; $CHROMIUM names another one). Every wait is bounded.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

# as the workplace's probe starts it: no sandbox as root, no background traffic, software WebGL
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


def chromium_path() -> str | None:
    """$CHROMIUM, else chromium / chromium-browser on PATH."""
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


class ViewerPage:
    """One viewer page in a headless Chromium (Playwright's sync API); ``close()`` ends the browser."""

    def __init__(self, url: str, width: int = 1100, height: int = 720, timeout_s: float = 60.0):
        from playwright.sync_api import sync_playwright

        exe = chromium_path()
        if exe is None:
            raise RuntimeError("no Chromium found: apt-get install chromium (or set $CHROMIUM)")
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
                                                    timeout=timeout_s * 1000)
            self.page = self.browser.new_page(viewport={"width": width, "height": height})
            self.page.set_default_timeout(timeout_s * 1000)
            self.page.goto(url, timeout=timeout_s * 1000)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for closer in (getattr(self, "browser", None), self._pw):
            try:
                if closer is not None:
                    (closer.close if closer is not self._pw else closer.stop)()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def dismiss_notifications(self) -> None:
        """Close the page's notifications (viser tells that WebGL runs in software)."""
        buttons = self.page.locator(".mantine-Notification-closeButton")
        for i in reversed(range(buttons.count())):
            buttons.nth(i).click()

    def text_input(self, label: str):
        """The text box of the GUI control labelled ``label``."""
        return self.page.locator(f"xpath=//label[normalize-space(text())='{label}']"
                                 f"/ancestor::div[.//input[@type!='checkbox' or not(@type)]][1]//input").first

    def button(self, label: str):
        return self.page.get_by_role("button", name=label, exact=True)

    def query(self, text: str) -> None:
        box = self.text_input("Query")
        box.fill(text)
        self.button("Search").click()

    def click_canvas(self, x: float, y: float, modifier: str | None = None) -> None:
        """A click at (x, y) of the 3D canvas (fractions of its size), with ``Shift`` / ``Alt`` held."""
        box = self.page.locator("canvas").first.bounding_box()
        if modifier:
            self.page.keyboard.down(modifier)
        self.page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])
        if modifier:
            self.page.keyboard.up(modifier)

    def screenshot(self, path=None) -> bytes:
        return self.page.screenshot(path=None if path is None else str(path))


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    """Poll ``predicate`` until it returns something true; a TimeoutError naming ``what`` after ``timeout_s``."""
    t_end = time.time() + timeout_s
    while time.time() < t_end:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"waited {timeout_s:g} s for {what}")


def wait_status(viewer, needle: str, timeout_s: float = 60.0, before: str | None = None) -> str:
    """The viewer's status line once it contains ``needle`` (and differs from ``before``)."""
    return wait_for(lambda: viewer.last_status if needle in viewer.last_status and viewer.last_status != before
                    else None, timeout_s, f"a status line with {needle!r} (last: {viewer.last_status!r})")


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from arguments.cli import load_run_config
    from scene.runtime import resolve_device
    from viewer import Viewer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="a run directory (instance + mapping done)")
    p.add_argument("--query", required=True, help="the text query to highlight")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--size", nargs=2, type=int, default=(1100, 720), metavar=("W", "H"), help="page size")
    args = p.parse_args(argv)
    cfg = load_run_config(Path(args.model_path))
    viewer = Viewer(Path(args.model_path), cfg, resolve_device(cfg.run.device), port=0)
    page = None
    try:
        viewer.start()
        page = ViewerPage(viewer.url, *args.size)
        wait_for(lambda: viewer.server.get_clients(), 60, "the page to connect")
        time.sleep(3.0)                                  # the splats reach the page and are sorted
        page.dismiss_notifications()
        before = viewer.last_status
        page.query(args.query)
        print(wait_status(viewer, args.query, before=before))
        time.sleep(3.0)
        page.screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        if page is not None:
            page.close()
        viewer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
