"""The CLI loads a command's implementation only when that command runs.

Building the parser (every ``sovereign`` call, ``--help`` of any level) must not import the control
plane or its libraries; the resident agent (``sovereign node agent``) must not carry them either. Checked
on the modules a fresh interpreter has loaded (``sys.modules``), never on time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovereign.cli import build_parser
from sovereign.cli._lazy import LazyRunner

ROOT = Path(__file__).resolve().parents[2]

# what only some commands need (the control plane, storage, OpenBao, Keycloak, the console, XML signatures)
HEAVY = ("sqlalchemy", "hvac", "kms.server", "keycloak", "uvicorn", "starlette", "lxml", "signxml", "numpy")
# the operator and node clients' transport: loaded by the commands that talk to a server, not by --help
PARSER_ALSO_WITHOUT = ("grpc",)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _among(loaded: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def _loaded_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["node", "--help"], ["node", "agent", "--help"], ["node", "exec", "--help"],
     ["serve", "--help"], ["admin", "keys", "list", "--help"], ["evidence", "simulate", "--help"]],
    ids=" ".join,
)  # fmt: skip
def test_help_imports_no_command_implementation(argv: list[str]) -> None:
    # `python -m sovereign ARGV`, then the modules it loaded (sys.modules: -X importtime does not report
    # importlib.import_module, which builds the tree)
    loaded = _loaded_after(
        "import runpy, sys\n"
        f"sys.argv = ['sovereign', *{argv!r}]\n"
        "try:\n"
        "    runpy.run_module('sovereign', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code"
    )
    assert "sovereign.cli.commands.node" in loaded  # the report is read right: the tree was built
    assert _among(loaded, HEAVY + PARSER_ALSO_WITHOUT) == []
    assert _among(loaded, ("sovereign.cli.node", "sovereign.cli.serve", "sovereign.cli.admin")) == []


def test_building_and_formatting_the_whole_parser_imports_no_heavy_module() -> None:
    loaded = _loaded_after(
        "from sovereign.cli import build_parser\n"
        "import argparse\n"
        "def walk(p):\n"
        "    p.format_help()\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for child in a.choices.values(): walk(child)\n"
        "walk(build_parser())"
    )
    assert "sovereign.cli.commands.serve" in loaded
    assert _among(loaded, HEAVY + PARSER_ALSO_WITHOUT) == []


def test_the_resident_agent_path_carries_no_control_plane() -> None:
    # `sovereign node agent` up to its first failure (no config file): the parser, the agent's runner
    # module and what it loads to start; then everything the resident agent's module imports.
    loaded = _loaded_after(
        "from sovereign.cli import main\n"
        "assert main(['node', 'agent', '--config', '/nonexistent/node.toml']) == 1\n"
        "import sovereign.cli._node_agent"
    )
    assert "enclave.resident" in loaded and "enclave.local_server" in loaded
    assert _among(loaded, HEAVY) == []
    # metrics are off unless node.toml sets metrics_listen: prometheus_client is loaded only then
    assert _among(loaded, ("prometheus_client", "enclave.agent_metrics")) == []


def _leaves(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, f"{path} {name}".strip())


def test_every_command_names_a_runner_that_exists() -> None:
    leaves = dict(_leaves(build_parser()))
    assert len(leaves) > 60
    for path, leaf in leaves.items():
        func = leaf.get_default("func")
        assert isinstance(func, LazyRunner), path
        assert callable(func.resolve()), f"{path}: {func!r}"


def test_choices_copied_into_declarations_match_their_source() -> None:
    from attestation.simulate import Fault
    from enclave import config
    from enclave.choices import GPU_CHOICES, PROVIDER_CHOICES
    from sovereign.cli.commands import admin, evidence, node
    from sovereign.client import records

    assert tuple(f.name for f in Fault) == evidence.FAULTS
    # one definition (enclave.choices) that the agent's config and the declarations both import
    assert node.PROVIDER_CHOICES is PROVIDER_CHOICES and node.GPU_CHOICES is GPU_CHOICES
    assert config.PROVIDER_CHOICES is PROVIDER_CHOICES and config.GPU_CHOICES is GPU_CHOICES
    for declared, enum in (
        (admin.NODE_STATES, records.NodeState),
        (admin.KINDS, records.KeyKind),
        (admin.KEY_STATES, records.KeyState),
        (admin.CHANGE_STATES, records.ChangeState),
    ):
        assert declared == tuple(sorted(m.value.lower() for m in enum))
    leaves = dict(_leaves(build_parser()))
    (decision,) = [a for a in leaves["audit query"]._actions if a.dest == "decision"]
    assert set(decision.choices or ()) == {d.value.lower() for d in records.Decision}


def test_the_shared_choices_module_loads_nothing_but_itself() -> None:
    loaded = _loaded_after("import enclave.choices")
    assert not _among(loaded, ("grpc", "enclave.providers", "enclave.client", "cryptography", *HEAVY))
