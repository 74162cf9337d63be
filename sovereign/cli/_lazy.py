"""Runners named by a dotted path, imported when their command runs.

Declaring the parser tree (``sovereign.cli.commands``) must not import what the commands use: the
control plane, SQLAlchemy, hvac, Keycloak, gRPC, XML signatures... Every ``sovereign`` call builds the
whole tree, so a command's implementation module is named here and imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

Runner = Callable[[argparse.Namespace], int | None]


class LazyRunner:
    """The runner ``module:name``; with ``factory_args``, ``name`` is a factory and the runner is
    ``name(*factory_args)``."""

    def __init__(self, target: str, factory_args: tuple[object, ...]) -> None:
        self.target = target
        self.factory_args = factory_args

    def resolve(self) -> Runner:
        module_name, _, name = self.target.partition(":")
        found = getattr(importlib.import_module(module_name), name)
        runner: Runner = found(*self.factory_args) if self.factory_args else found
        return runner

    def __call__(self, args: argparse.Namespace) -> int | None:
        return self.resolve()(args)

    def __repr__(self) -> str:
        return f"runs({self.target!r})"


def runs(target: str, *factory_args: object) -> LazyRunner:
    return LazyRunner(target, factory_args)
