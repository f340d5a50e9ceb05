"""Build-on-first-use C++ extensions (torch custom ops), shared by the project's CPU kernels.

``Extension(...).ops()`` compiles one C++ source with ``torch.utils.cpp_extension`` (needs g++ and
ninja; ~10 s) into ``$COS3D_EXT_CACHE/<torch version>-<hash>`` (default root
``~/.cache/cos3d/torch_extensions``) and loads it; the source registers its ops under a
``torch.ops`` namespace. The hash covers the source, the flags and the python version, so an edited
source never reuses a stale build. A failed build (no compiler, no ninja, a compile error, a
read-only cache) never raises from :meth:`Extension.available`: it returns False, and one warning
names the reason, so callers fall back to their torch paths.

Users: ``cpp_backend.py`` (the rasterizer, ``csrc/rasterize.cpp``) and ``scene/language_field.py``
(the factored field's sparse sums, ``scene/csrc/field_sums.cpp``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Portable flags: the hot loops carry their own AVX2 / AVX-512 clones where they need them, so no
# -march=native; no -ffast-math (the kernels' comparisons must match the torch references).
CFLAGS = ("-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math")  # torch adds its own -std=c++ flag
LDFLAGS = ("-fopenmp",)


def _summarise(msg: str) -> str:
    """The informative line of a build log: a compiler 'error:', a missing tool, else the last line."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    keys = ("error:", "not found", "no such file", "command not found")
    hit = next((ln for ln in lines if any(k in ln.lower() for k in keys)), None)
    if hit is None:
        rest = [ln for ln in lines if not ln.startswith("ninja:")]
        hit = (rest or lines or [""])[-1]
    return hit[:300]


class Extension:
    """One C++ source whose ops register as ``torch.ops.<namespace>.*`` (``probe`` is one of them)."""

    def __init__(self, source: Path, namespace: str, probe: str, what: str, fallback: str):
        self.source, self.namespace, self.probe = Path(source), namespace, probe
        self.what, self.fallback = what, fallback   # for the warning: "the C++ <what> ...; <fallback>"
        self._state: dict = {}   # "ok": bool, "reason": str, "ops": the torch.ops namespace once loaded

    def build_dir(self) -> Path:
        h = hashlib.sha256()
        h.update(self.source.read_bytes())
        h.update(" ".join(CFLAGS + LDFLAGS).encode())
        h.update(sys.version.encode())
        root = os.environ.get("COS3D_EXT_CACHE") or str(Path.home() / ".cache" / "cos3d" / "torch_extensions")
        tv = torch.__version__.replace("+", "_")
        return Path(root) / f"{tv}-{h.hexdigest()[:16]}"

    def _load(self) -> None:
        if "ok" in self._state:
            return
        try:
            if not hasattr(getattr(torch.ops, self.namespace), self.probe):
                import warnings

                # its import logs "No CUDA runtime is found, using CUDA_HOME=..." on CPU machines: not our concern
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
                from torch.utils import cpp_extension
                build = self.build_dir()
                build.mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # is_python_module=False: the library registers torch.ops.<namespace>.* on load.
                    # load() appends to the flag lists it is given: pass copies (the hash uses them)
                    cpp_extension.load(name=f"{self.namespace}_{build.name.split('-')[-1]}",
                                       sources=[str(self.source)], extra_cflags=list(CFLAGS),
                                       extra_ldflags=list(LDFLAGS), build_directory=str(build),
                                       is_python_module=False, verbose=False)
            self._state["ops"] = getattr(torch.ops, self.namespace)
            self._state["ok"], self._state["reason"] = True, ""
        except Exception as e:  # no compiler, no ninja, compile error, read-only cache, ...
            reason = f"{type(e).__name__}: {_summarise(str(e))}"
            self._state["ok"], self._state["reason"] = False, reason
            log.warning("the C++ %s could not be built (%s); %s", self.what, reason, self.fallback)

    def available(self) -> bool:
        """True if the extension builds and loads (built on the first call, then cached; never raises)."""
        try:
            self._load()
        except Exception as e:  # pragma: no cover - _load already catches everything
            self._state["ok"], self._state["reason"] = False, repr(e)
        return bool(self._state.get("ok"))

    def unavailable_reason(self) -> str:
        """Why :meth:`available` is False ('' when it is True)."""
        self.available()
        return self._state.get("reason", "")

    def ops(self):
        """The ``torch.ops`` namespace (RuntimeError naming the reason when the build failed)."""
        if not self.available():
            raise RuntimeError(f"the C++ {self.what} is not available ({self._state['reason']})")
        return self._state["ops"]
