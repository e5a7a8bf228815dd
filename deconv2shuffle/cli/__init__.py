"""The command line: a typer app with one module per command.

Each command parses its options, calls one library function and one renderer (``_render``, the
one module that owns the console). ``_options`` holds the shared option definitions and parsers;
``_errors`` turns library errors into one line and an exit code, and API parameter mentions into
flags. torch is imported only inside commands, so ``--help`` is instant.
"""

from __future__ import annotations

from . import batch, bench, explain, inspect, migrate, spec
from ._app import Command, app, main

for _command in (migrate, spec, inspect, explain, batch, bench):
    app.command(_command.NAME, cls=Command)(_command.command)

__all__ = ["app", "main"]
