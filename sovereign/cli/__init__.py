"""``sovereign`` command line. Each module of ``sovereign.cli.commands`` declares one command's arguments
(``register(subparsers)``) and names its runner by a dotted path (``_lazy.runs``): building the parser
imports no command's implementation (``sovereign.cli.<command>``), which loads only when it runs.

CLI modules hold no logic of their own: they parse arguments, call a use case, and print the result
(a table for people, ``--json`` for scripts, see ``_output``). Errors print their code and a hint and exit
non-zero; arguments the command cannot use exit 2 with ``USAGE_INVALID``.
"""

from __future__ import annotations

import os

# gRPC's C core logs handshake and connection failures straight to stderr; the CLI reports them itself,
# coded and with a hint (proto.rpc_failure). Read by grpc when it is first imported, so set it first.
if not os.environ.get("SOVEREIGN_DEBUG"):
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from sovereign.cli import commands
from sovereign.cli._output import EXIT_USAGE, USAGE_INVALID, UsageError, fail
from sovereign.cli._process import refuse_core_dumps


class CliParser(argparse.ArgumentParser):
    """argparse with coded usage errors: ``error: USAGE_INVALID: ...`` and a hint, exit 2 (the JSON
    envelope on stdout too when ``--json`` was given)."""

    json_requested = False

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        hint = f"see: {self.prog} --help"
        fail(UsageError(message, hint), as_json=False)
        if CliParser.json_requested:
            fail(UsageError(message, hint), as_json=True)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="sovereign",
        description="Confidential-computing key release: attest training nodes, release sealed keys, audit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def _coded(exc: Exception) -> bool:
    return all(hasattr(exc, name) for name in ("code", "message", "hint"))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    CliParser.json_requested = "--json" in args_list
    parser = build_parser()
    args = parser.parse_args(args_list)
    as_json = bool(getattr(args, "json", False))
    refuse_core_dumps()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (argparse.ArgumentTypeError, argparse.ArgumentError, UsageError) as exc:
        hint = f"see: sovereign {args.command} --help"
        return fail(
            UsageError(str(exc), getattr(exc, "hint", "") or hint), as_json=as_json, exit_code=EXIT_USAGE
        )
    except Exception as exc:
        if os.environ.get("SOVEREIGN_DEBUG"):
            raise
        if _coded(exc):
            # A core's coded error that a command did not catch: its code, message and hint are vetted.
            return fail(exc, as_json=as_json)  # type: ignore[arg-type]
        # Only the type: an unexpected exception's text is not vetted to be free of secrets.
        print(
            f"internal error ({type(exc).__name__}); rerun with SOVEREIGN_DEBUG=1 for details",
            file=sys.stderr,
        )
        return 70


__all__ = ["USAGE_INVALID", "CliParser", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
