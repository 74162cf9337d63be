"""Runners named by a dotted path, imported when their command runs.

Declaring the parser tree (``sovereign.cli.commands``) must not import what the commands use: the
control plane, SQLAlchemy, hvac, Keycloak, XML signatures... Every ``sovereign`` call builds the whole
tree, so a command's implementation module is named here and imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

Runner = Callable[[argparse.Namespace], int | None]


def runs(target: str, *factory_args: object) -> Runner:
    """The runner ``module:name``; with ``factory_args``, ``name`` is a factory and the runner is
    ``name(*factory_args)``."""
    module_name, _, name = target.partition(":")

    def run(args: argparse.Namespace) -> int | None:
        found = getattr(importlib.import_module(module_name), name)
        runner: Runner = found(*factory_args) if factory_args else found
        return runner(args)

    run.__qualname__ = run.__name__ = f"runs({target!r})"
    return run
