"""Errors caused by the user's input, which the command-line tools print as one line (exit 2).

A leaf: imports nothing of the project, so every layer may raise these (see docs/layers.md).
"""


class UserError(Exception):
    """Raised for a problem with the input (a file, a setting, the order of the stages), not a bug:
    ``arguments.cli.run_cli`` prints it as ``error: <message>`` without a traceback."""


class StageError(UserError, RuntimeError):
    """A stage cannot run as asked (missing predecessor, conflicting earlier run, busy run dir, ...)."""
