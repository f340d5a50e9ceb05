"""README.md's documented commands, run as written on a generated LERF-OVS-shaped scene (CPU-sized).

Every line of the README's ```bash blocks and every command of its pipeline table (the table with a
``command`` column) is classified:

* run: it runs a script or CLI of this repo (``script/*.sh``, ``train.py``, ``query.py``,
  ``render.py``, ``eval_lerf.py``, ``python -m preprocess.*``, ``python -m arguments``). It is run
  from the repo root through ``bash``, after the substitutions below, in document order (later
  commands use what earlier ones trained) and must exit 0;
* skip: the explicit ``SKIP`` list below (installs, the test suite itself, real SAM/CLIP weights,
  CUDA, benchmarks), and, read from the argument files a command names, commands whose queries need
  the real OpenCLIP weights. A skipped script command still runs with a stub interpreter (``$PYTHON``),
  which checks its options and files without training; a skipped python CLI has its flags checked
  against its ``--help``;
* anything else fails the test: a new kind of command needs a decision here.

Substitutions (``placeholders``): ``/data/lerf_ovs`` -> the generated root, the LERF-OVS scene names
-> the one generated scene, ``data/synthetic`` / ``output/`` -> folders in tmp_path, ``<scene>``,
``<run>``, ... of the pipeline table -> real paths (an unknown ``<placeholder>`` fails the test),
``[optional]`` parts -> the command without them and with all of them, a table row starting with
``...`` -> the row above plus its flags (into a run dir of its own). CPU sizing (``cpu_sized``):
``train.py`` gets ``-c tests/readme_tiny.yaml`` before its own argument files, ``--set
X.iterations=N`` becomes 30, ``preprocess.synthetic`` gets the tiny scene size; the scripts get the
same through ``EXTRA_ARGFILES`` and ``SYNTH_ARGS`` (script/common.sh), so their commands run unchanged.

The other tests here check the scripts' own command line with the stub interpreter (no training):
``--help``, ``-c`` / ``--config`` / positional argument files resolved from another directory, the
errors, and that ``script/ablate.sh`` hands its ``-c`` files to every train/infer call.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TINY = REPO / "tests" / "readme_tiny.yaml"
SCRIPTS = ("train", "infer", "ablate", "train_scannet", "infer_scannet")

SCENE = "figurines"  # the generated stand-in for every LERF-OVS scene
LERF_SCENES = ("figurines", "teatime", "ramen", "waldo_kitchen")
TINY_SCENE = ["--views", "8", "--width", "64", "--height", "48", "--objects", "3", "--set", "n_points=2000"]
TINY_ITERATIONS = 30
TIMEOUT = 240  # seconds, per command

# README commands that are not run: (regex on the command, why, check its flags against --help)
SKIP = [
    (r"^pip3? install\b", "installs packages", False),
    (r"\bpython3? -m pytest\b", "the test suite itself", False),
    (r"\bpython3? -m preprocess\.run\b", "needs the real SAM / CLIP weights (ckpts/README.md)", True),
    (r"^conda\b", "conda environment set-up", False),
    (r"^export\b", "environment set-up", False),
    (r"\bpython3? -c\b", "builds gsplat's CUDA kernels", False),
    (r"\bpython3? (benchmarks/|-m benchmarks\.)", "benchmarks: minutes, gpu.py needs CUDA", False),
    (r"\bpython3? viewer\.py\b", "a server that runs until Ctrl-C (tests/test_viewer.py drives it in a browser)", True),
    (r"\bpython3? script/viewer_screenshot\.py\b", "needs Chromium (tests/test_viewer.py runs its driver)", False),
    (r"^ssh\b", "an SSH tunnel to another machine", False),
    (r"\bpython3? -m preprocess\.capture\b", "structure from motion of a capture (tests/test_capture.py runs it)", True),
    (r"^torchrun\b", "several processes (tests/test_data_parallel.py runs train.py under torchrun)", False),
    (r"\bpython3? sweep\.py\b", "a grid of trainings on Ray / Slurm (tests/test_sweep.py runs one)", True),
]
# README commands that run a script or CLI of this repo
REPO_COMMAND = re.compile(r"(^|[\s;&|(])(bash script/\w+\.sh|python3? (train|query|render|eval_lerf)\.py"
                          r"|python3? -m (preprocess(\.\w+)*|arguments))\b")
# README sections whose commands get an output root of their own (the rest share one)
OWN_OUTPUT = {"The two commands": "out_quickstart"}


# ---------------------------------------------------------------------------------------------
# reading the README
def readme_commands(text: str) -> list[dict]:
    """Document-order commands: {"section", "source" ("bash" | "table"), "raw", "continued"}."""
    cmds, section, in_bash, fence, header, prev_table = [], "", False, None, None, None
    pending = ""
    for line in text.splitlines():
        if fence is None and line.startswith("#"):
            section = line.lstrip("#").strip()
            header = None
            continue
        if line.startswith("```"):
            if fence is None:
                fence, in_bash = line, line.strip() == "```bash"
            else:
                fence, in_bash = None, False
            continue
        if fence is not None:
            if not in_bash:
                continue
            line = pending + strip_comment(line).strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if line:
                cmds.append({"section": section, "source": "bash", "raw": line, "continued": False})
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                continue
            if "command" not in header or set("".join(cells)) <= set("-: "):
                continue
            cell = cells[header.index("command")]
            m = re.fullmatch(r"`([^`]*)`", cell)
            if not m:
                continue
            raw, continued = m.group(1).strip(), False
            if raw.startswith("..."):
                assert prev_table, f"README table row {raw!r} continues no command"
                raw, continued = prev_table + raw[3:], True
            else:
                prev_table = raw
            cmds.append({"section": section, "source": "table", "raw": raw, "continued": continued})
        else:
            header = None
    return cmds


def strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def expand_optional(cmd: str) -> list[str]:
    """``a [b] [c]`` -> ``a`` and ``a b c``."""
    if "[" not in cmd:
        return [cmd]
    without = re.sub(r"\s*\[[^\]]*\]", "", cmd)
    with_all = re.sub(r"\[([^\]]*)\]", r"\1", cmd)
    return [without, with_all]


def placeholders(w: dict, continued: bool) -> dict:
    run = w["out"] / "default" / SCENE
    return {
        "/data/lerf_ovs": str(w["data"]),
        "/data/scannet": str(w["synth"] / "scannet"),  # the generated room the section's first command made
        "data/synthetic": str(w["synth"]),
        "output/<tag>": str(w["out"] / "default"),
        "<scene>": str(w["data"] / SCENE),
        # a continued row ("... --init_ply <point_cloud.ply>") adopts the first run's model into a new one
        "<run>": str(w["out"] / "init_ply" / SCENE if continued else run),
        "<point_cloud.ply>": str(run / "rgb" / "point_cloud.ply"),
        "<name>": "default",  # the default scene, which the first section generated (same size: SYNTH_ARGS)
        "<s...>": SCENE,
        "<labels>": str(w["data"] / "label"),
        "<file>": str(TINY),
    }


def substitute(cmd: str, subs: dict) -> str:
    names = "|".join(LERF_SCENES)
    cmd = re.sub(rf"\b(?:{names})(?:\s+(?:{names}))*\b", SCENE, cmd)
    for k in sorted(subs, key=len, reverse=True):
        cmd = cmd.replace(k, subs[k])
    left = re.findall(r"<[^<>\s]+>", cmd)
    assert not left, f"README command {cmd!r}: unknown placeholder(s) {left}: teach tests/test_readme.py"
    return cmd


def cpu_sized(cmd: str) -> str:
    """Tiny schedules / scene size for the python CLIs (the scripts get them from the environment)."""
    cmd = re.sub(r"\b(python3? train\.py)\b", rf"\1 -c {shlex.quote(str(TINY))}", cmd)
    cmd = re.sub(r"(--set[ =][\w.]*\.iterations=)\d+", rf"\g<1>{TINY_ITERATIONS}", cmd)
    cmd = re.sub(r"(python3? -m preprocess\.synthetic\b[^;&|]*)", lambda m: m.group(1).rstrip() + " "
                 + " ".join(TINY_SCENE) + " --quiet", cmd)
    return cmd


def argfiles_of(cmd: str) -> list[Path]:
    """The argument files a command names (-c F, --config F, --config=F, positional *.yaml)."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return []
    out = []
    for i, w in enumerate(words):
        f = None
        if w in ("-c", "--config") and i + 1 < len(words):
            f = words[i + 1]
        elif w.startswith("--config="):
            f = w.split("=", 1)[1]
        elif w.endswith((".yaml", ".yml")) and (i == 0 or words[i - 1] not in ("-c", "--config")):
            f = w
        if f:
            p = Path(f) if Path(f).is_absolute() else REPO / f
            if p.is_file():
                out.append(p)
    return out


def needs_weights(cmd: str) -> str | None:
    """Why a command cannot run on a generated scene, from the argument files it names."""
    for f in argfiles_of(cmd):
        d = yaml.safe_load(f.read_text()) or {}
        if ((d.get("query") or {}).get("text_encoder")) == "openclip":
            return (f"{f.relative_to(REPO) if f.is_relative_to(REPO) else f} encodes queries with OpenCLIP: "
                    "needs the real weights (ckpts/README.md), and a generated scene's features are not CLIP's")
    return None


def classify(cmd: str) -> tuple[str, str]:
    """("run" | "skip" | "stub" | "help" | "unknown", reason)."""
    for pattern, why, check_flags in SKIP:
        if re.search(pattern, cmd):
            return ("help" if check_flags else "skip"), why
    if not REPO_COMMAND.search(cmd):
        return "unknown", "not a command of this repo the test knows"
    why = needs_weights(cmd)
    if why:
        return ("stub" if "script/" in cmd else "help"), why
    return "run", ""


def plan(w: dict) -> list[dict]:
    steps = []
    for c in readme_commands(README.read_text()):
        subs = placeholders(w, c["continued"])
        for variant in (expand_optional(c["raw"]) if c["source"] == "table" else [c["raw"]]):
            cmd = cpu_sized(substitute(variant, subs))
            kind, why = classify(cmd)
            steps.append({**c, "cmd": cmd, "kind": kind, "why": why,
                          "out": w["root"] / OWN_OUTPUT.get(c["section"], "out")})
    return steps


# ---------------------------------------------------------------------------------------------
# environment
def make_world(root: Path) -> dict:
    w = {"root": root, "data": root / "lerf_ovs", "synth": root / "synthetic", "out": root / "out",
         "bin": root / "bin", "stub_log": root / "stub_calls.txt"}
    w["bin"].mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):  # the README says `python`: this interpreter
        link = w["bin"] / name
        if not link.exists():
            link.symlink_to(sys.executable)
    stub = w["bin"] / "stub-python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        "# stands in for $PYTHON: records its arguments (one line, \\x1f-separated) and succeeds;\n"
        "# `-c CODE` (ablate.sh reading an argument file) runs the real interpreter\n"
        f'if [[ "${{1:-}}" == "-c" ]]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
        f'{{ printf "%s\\x1f" "$@"; printf "\\n"; }} >> "${{STUB_LOG:-{w["stub_log"]}}}"\n')
    stub.chmod(0o755)
    w["stub"] = stub
    return w


def base_env(w: dict, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATA_ROOT", "LABEL_ROOT", "OUT_ROOT", "TAG", "SCENES", "FORCE", "SYNTH_ROOT", "DEFAULT_SCENE",
        "CKPT_DIR", "PYTHON", "EXTRA_ARGFILES", "SYNTH_ARGS")}
    env.update(PATH=f"{w['bin']}{os.pathsep}{env.get('PATH', '')}", PYTHON=sys.executable,
               SYNTH_ROOT=str(w["synth"]), OUT_ROOT=str(w["out"]), EXTRA_ARGFILES=str(TINY),
               SYNTH_ARGS=" ".join(TINY_SCENE + ["--quiet"]), STUB_LOG=str(w["stub_log"]),
               OMP_NUM_THREADS="1")  # tiny arrays: one thread per process is faster on 2 cores
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sh(cmd, env, cwd=REPO, timeout=TIMEOUT):
    args = ["bash", "-o", "pipefail", "-euc", cmd] if isinstance(cmd, str) else cmd
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def stub_calls(w: dict) -> list[list[str]]:
    if not w["stub_log"].is_file():
        return []
    return [line.split("\x1f")[:-1] for line in w["stub_log"].read_text().splitlines() if line]


def config_files(call: list[str]) -> list[str]:
    return [call[i + 1] for i, a in enumerate(call) if a == "-c"]


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


# ---------------------------------------------------------------------------------------------
# the README, read
def test_readme_commands_are_known(world):
    """Every documented command is run or explicitly skipped, placeholders resolve, and the
    extraction finds the commands the README is about (so a reformatted README cannot pass empty)."""
    steps = plan(world)
    unknown = [s["raw"] for s in steps if s["kind"] == "unknown"]
    assert not unknown, f"README commands the test does not know (add them to SKIP or REPO_COMMAND): {unknown}"
    run = " ".join(s["raw"] for s in steps if s["kind"] in ("run", "stub"))
    for needed in ("script/train.sh", "script/infer.sh", "train.py --stage rgb", "--stage instance",
                   "--stage mapping", "query.py", "render.py", "eval_lerf.py", "preprocess.synthetic"):
        assert needed in run, f"no README command runs {needed!r}"
    assert any(str(world["data"]) in s["cmd"] and "script/train.sh" in s["cmd"] for s in steps), \
        "the LERF-OVS section's train command was not found"


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    """Generate a LERF-OVS-shaped scene, then run the README's commands in order (measured: ~2 min on
    2 loaded cores, most of it torch start-up: ~40 processes)."""
    w = make_world(tmp_path)
    t0 = time.time()
    gen = [sys.executable, "-m", "preprocess.synthetic", "--root", str(w["data"]), "--scene", SCENE,
           "--seed", "0", *TINY_SCENE, "--quiet"]
    r = sh(gen, base_env(w))
    assert r.returncode == 0, r.stderr
    for d in (f"{SCENE}/images", f"{SCENE}/sparse/0", f"{SCENE}/language_features", f"label/{SCENE}"):
        assert (w["data"] / d).is_dir(), d  # OpenGaussian's LERF-OVS layout

    log = []
    for s in plan(w):
        env = base_env(w, OUT_ROOT=s["out"])
        if s["kind"] == "skip":
            log.append(f"skip  {s['cmd']}  ({s['why']})")
            continue
        if s["kind"] == "help":  # flags checked against --help
            m = re.search(r"python3? (-m [\w.]+|\S+\.py)", s["cmd"])
            r = sh(f"python {m.group(1)} --help", env)
            assert r.returncode == 0, f"{s['cmd']}: --help failed:\n{r.stderr[-3000:]}"
            flags = {f for f in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", s["cmd"][m.end():])}
            missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", r.stdout)]
            assert not missing, f"README command {s['raw']!r}: flags {missing} are not in its --help"
            log.append(f"flags {s['cmd']}  ({s['why']})")
            continue
        if s["kind"] == "stub":
            env["PYTHON"] = str(w["stub"])
        t = time.time()
        r = sh(s["cmd"], env)
        assert r.returncode == 0, (f"README command failed (rc {r.returncode}):\n  {s['raw']}\nran as:\n  "
                                   f"{s['cmd']}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
        log.append(f"{s['kind']:5} {time.time() - t:5.1f}s {s['cmd']}")
    print("\n".join(log) + f"\ntotal {time.time() - t0:.0f}s")

    quick = tmp_path / OWN_OUTPUT["The two commands"] / "default"
    assert (quick / "default" / "mapping" / "done.json").is_file()
    assert (quick / "metrics.json").is_file() and (quick / "metrics.csv").is_file()
    run = w["out"] / "default" / SCENE
    for f in ("rgb/point_cloud.ply", "instance/point_cloud.ply", "mapping/language_field.pt",
              "queries/index.json"):
        assert (run / f).is_file(), f
    assert (w["out"] / "default" / "metrics.json").is_file()
    assert not (w["synth"] / SCENE).exists()  # the LERF-OVS commands used DATA_ROOT, not the default root


# ---------------------------------------------------------------------------------------------
# the scripts' command line (stub interpreter: nothing is trained)
@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_script_help(world, script, flag):
    r = sh(["bash", str(REPO / "script" / f"{script}.sh"), flag], base_env(world, PYTHON=world["stub"]),
           cwd=world["root"])
    assert r.returncode == 0, r.stderr
    assert f"bash script/{script}.sh" in r.stdout and "--config" in r.stdout and "EXTRA_ARGFILES" in r.stdout
    assert not stub_calls(world)  # nothing ran


def test_argfiles_relative_to_cwd_then_repo(world):
    """-c / --config / --config= / positional files from another directory: the current directory
    first, then the repo root; EXTRA_ARGFILES before them; relative roots from the caller's cwd."""
    elsewhere = world["root"] / "elsewhere"
    (elsewhere / "arguments" / "ablations").mkdir(parents=True)
    (elsewhere / "mine.yaml").write_text("query:\n  score_thresh: 0.4\n")
    # shadows the repo's file of the same relative path: the current directory wins
    shadow = elsewhere / "arguments" / "ablations" / "instance_only.yaml"
    shadow.write_text("query:\n  mode: instance_only\n")
    (world["root"] / "out" / "default" / "a").mkdir(parents=True)
    env = base_env(world, PYTHON=world["stub"], SCENES="a", OUT_ROOT="../out",
                   EXTRA_ARGFILES="arguments/synthetic_cpu.yaml mine.yaml")
    r = sh(["bash", str(REPO / "script" / "infer.sh"), "-c", "mine.yaml", "--config",
            "arguments/ablations/language_only.yaml", "--config=arguments/ablations/instance_only.yaml",
            "arguments/ablations/mlp_mapping.yaml"], env, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    calls = stub_calls(world)
    assert [c[0] for c in calls] == ["query.py", "render.py", "eval_lerf.py"]
    expected = [str(REPO / "arguments" / "synthetic_cpu.yaml"), str(elsewhere / "mine.yaml"),
                str(elsewhere / "mine.yaml"), str(REPO / "arguments" / "ablations" / "language_only.yaml"),
                str(shadow), str(REPO / "arguments" / "ablations" / "mlp_mapping.yaml")]
    for c in calls[:2]:
        assert config_files(c) == expected, c
        assert os.path.normpath(c[c.index("-m") + 1]) == str(world["root"] / "out" / "default" / "a")
    assert os.path.normpath(calls[2][calls[2].index("--runs_root") + 1]) == str(world["root"] / "out" / "default")


@pytest.mark.parametrize("args, extra, message", [
    (["-c", "nope.yaml"], "", "argument file not found: 'nope.yaml' (tried {cwd}/nope.yaml and {repo}/nope.yaml)"),
    (["nope.yaml"], "", "argument file not found: 'nope.yaml'"),
    (["--config"], "", "--config needs an argument file"),
    (["--bogus"], "", "unknown option: --bogus"),
    ([], "missing.yaml", "argument file not found: 'missing.yaml'"),
])
def test_script_errors(world, args, extra, message):
    for script in SCRIPTS:
        lead = ["figurines"] if script in ("train", "ablate", "train_scannet") and args and args[0] == "nope.yaml" else []
        r = sh(["bash", str(REPO / "script" / f"{script}.sh"), *lead, *args],
               base_env(world, PYTHON=world["stub"], EXTRA_ARGFILES=extra, SCENES="a"), cwd=world["root"])
        assert r.returncode == 2, (script, r.stdout, r.stderr)
        assert message.format(cwd=world["root"], repo=REPO) in r.stderr, (script, r.stderr)
    assert not stub_calls(world)  # refused before anything ran


def test_train_scene_and_default_scene(world):
    data = world["root"] / "data"
    (data / "figurines" / "language_features").mkdir(parents=True)
    (world["synth"] / "default" / "language_features").mkdir(parents=True)
    (world["root"] / "mine.yaml").write_text("rgb:\n  iterations: 5\n")
    env = base_env(world, PYTHON=world["stub"], DATA_ROOT="data", OUT_ROOT="out", EXTRA_ARGFILES="")
    r = sh(["bash", str(REPO / "script" / "train.sh"), "figurines", "-c", "mine.yaml"], env, cwd=world["root"])
    assert r.returncode == 0, r.stderr
    r = sh(["bash", str(REPO / "script" / "train.sh"), "--config", "mine.yaml"], env, cwd=world["root"])
    assert r.returncode == 0, r.stderr
    calls = stub_calls(world)
    stages = [c for c in calls if c[0] == "train.py"]
    assert len(stages) == 6
    for c in stages[:3]:  # the named scene of $DATA_ROOT (relative to the caller's directory)
        assert c[c.index("-s") + 1] == str(data / "figurines")
        assert c[c.index("-m") + 1] == str(world["root"] / "out" / "default" / "figurines")
        assert config_files(c) == [str(world["root"] / "mine.yaml")]
    gen = [c for c in calls if c[:2] == ["-m", "preprocess.synthetic"]]
    assert len(gen) == 1 and gen[0][-len(TINY_SCENE) - 1:] == TINY_SCENE + ["--quiet"]  # SYNTH_ARGS
    for c in stages[3:]:  # no scene: the default one, with the CPU schedules first
        assert c[c.index("-s") + 1] == str(world["synth"] / "default")
        assert config_files(c) == [str(REPO / "arguments" / "synthetic_cpu.yaml"), str(world["root"] / "mine.yaml")]


def test_ablate_passes_config_files_to_every_call(world):
    """A real scene with extra -c files (e.g. a text encoder or schedules): the base run and every
    ablation get them, before the ablation file; EXTRA_ARGFILES before both."""
    data = world["root"] / "data"
    (data / "figurines" / "language_features").mkdir(parents=True)
    (world["root"] / "mine.yaml").write_text("query:\n  score_thresh: 0.4\n")
    (world["root"] / "out" / "default" / "figurines").mkdir(parents=True)  # what the stub does not train
    env = base_env(world, PYTHON=world["stub"], DATA_ROOT=data, OUT_ROOT=world["root"] / "out")
    r = sh(["bash", str(REPO / "script" / "ablate.sh"), "figurines", "-c", "mine.yaml",
            "arguments/ablations/language_only.yaml", "arguments/ablations/feature_dim_8.yaml"],
           env, cwd=world["root"])
    assert r.returncode == 0, r.stderr
    calls = [c for c in stub_calls(world) if c[0] in ("train.py", "query.py", "render.py")]
    assert len(calls) == 3 * 5  # base, language_only, feature_dim_8: 3 train + query + render each
    base = [str(TINY), str(world["root"] / "mine.yaml")]
    abl = REPO / "arguments" / "ablations"
    for i, c in enumerate(calls):
        want = base + ([] if i < 5 else [str(abl / ("language_only.yaml" if i < 10 else "feature_dim_8.yaml"))])
        assert config_files(c) == want, c
        if c[0] == "train.py":
            assert c[c.index("-s") + 1] == str(data / "figurines")
    runs = [c[c.index("-m") + 1] for c in calls]
    assert runs[0] == str(world["root"] / "out" / "default" / "figurines")
    assert runs[5] == str(world["root"] / "out" / "language_only" / "figurines")
    lo = world["root"] / "out" / "language_only" / "figurines"
    assert all((lo / s).is_symlink() for s in ("rgb", "instance", "mapping"))  # query-only ablation
    fd = world["root"] / "out" / "feature_dim_8" / "figurines"
    assert (fd / "rgb").is_symlink() and not (fd / "instance").exists()
