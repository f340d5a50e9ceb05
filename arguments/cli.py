"""What the command-line tools share: user errors as one line (exit 2), a run's saved config."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from scene.errors import StageError, UserError

from .config import apply_argfiles, apply_overrides, read_saved_config
from .schema import Config

# errors caused by the input (files, settings, order of stages): one line, no traceback unless --debug
USER_ERRORS = (UserError, FileNotFoundError, ValueError, KeyError)


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:  # KeyError's str() adds quotes
        return str(e.args[0])
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"  # a full disk, a permission, a name too long, ...
    return str(e)


def run_cli(run, args) -> int:
    try:
        return run(args)
    except (*USER_ERRORS, OSError) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130


def add_run_config_args(p: argparse.ArgumentParser) -> None:
    """-c/--set/--debug for tools that work on an existing run directory."""
    p.add_argument("-c", "--config", action="append", default=[], metavar="ARGFILE",
                   help="argument file(s) applied over the run's saved config, key by key "
                        "(e.g. arguments/ablations/language_only.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override one value of the run's saved config, e.g. --set query.mode=language_only")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def load_run_config(run_dir: Path, argfiles=(), overrides=()) -> Config:
    """``<run>/config.yaml`` (the latest stage's resolved config) + argument files + ``--set``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise StageError(f"{path} not found: train this run first (python train.py --stage rgb -s <scene> "
                         f"-m {run_dir}, or bash script/train.sh)")
    cfg, _ = read_saved_config(path)
    apply_argfiles(cfg, argfiles)
    return apply_overrides(cfg, overrides)
