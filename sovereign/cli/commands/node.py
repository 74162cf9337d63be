"""``sovereign node``: the arguments; the implementation is ``sovereign.cli.node``."""

from __future__ import annotations

import argparse
from pathlib import Path

from enclave.choices import GPU_CHOICES, PROVIDER_CHOICES
from enclave.providers.gpu import REPORT_FAULTS
from sovereign.cli._common import non_negative_int, positive_seconds
from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "node",
        help="node agent: attest this TEE and fetch sealed keys, decrypt datasets, seal model outputs",
        description="Each command registers this node (fresh in-memory keys, fresh hardware evidence) and "
        "then works in the same process; keys are never saved except by fetch-key to a tmpfs file.",
    )
    cmds = parser.add_subparsers(dest="node_command", metavar="ACTION", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=text)
        p.add_argument("--server", help="control plane HOST:PORT (env SOVEREIGN_NODE_SERVER)")
        p.add_argument(
            "--ca", type=Path, help="control-plane CA certificate to pin, PEM (env SOVEREIGN_NODE_CA)"
        )
        p.add_argument("--insecure-dev", action="store_true", help="plaintext gRPC, development only")
        p.add_argument("--provider", choices=PROVIDER_CHOICES, default=None, help="evidence provider (auto)")
        p.add_argument(
            "--sim-pki",
            type=Path,
            default=None,
            metavar="DIR",
            help="simulated providers only: the test PKI saved by `evidence simulate --save-pki DIR` "
            "(env SOVEREIGN_NODE_SIM_PKI; development only)",
        )
        p.add_argument(
            "--sim-measurement",
            default=None,
            metavar="HEX",
            help="simulated providers only: the SNP MEASUREMENT / TDX MRTD to report (default zeros)",
        )
        p.add_argument(
            "--sim-gpus",
            type=int,
            default=None,
            metavar="N",
            help="simulated providers only: attest N simulated H100s with the node (env SOVEREIGN_NODE_SIM_GPUS)",
        )
        p.add_argument(
            "--sim-gpu-fault",
            choices=REPORT_FAULTS,
            default=None,
            help="simulated GPUs only: what they report wrongly (e.g. vbios-mismatch)",
        )
        p.add_argument(
            "--gpu",
            choices=GPU_CHOICES,
            default=None,
            help="GPU evidence source: none, nvml (NVIDIA GPUs in CC mode), simulated (--sim-gpus); "
            "env SOVEREIGN_NODE_GPU; default none, or simulated with --sim-gpus",
        )
        p.add_argument(
            "--require-gpus",
            action="store_true",
            default=None,
            help="with --gpu nvml: no usable GPU in CC mode is an error instead of a node without GPUs",
        )
        p.add_argument("--node-name", help="this node's name, an RFC 1123 label (env SOVEREIGN_NODE_NAME)")
        p.add_argument("--group", action="append", default=None, help="group to request (repeatable)")
        p.add_argument("--timeout", type=positive_seconds, default=None, help="seconds per RPC (default 10)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    command("register", "attest and register this node, print the outcome").set_defaults(
        func=runs("sovereign.cli.node:_register")
    )

    fetch = command("fetch-key", "fetch a data key into a new 0600 file on a tmpfs")
    fetch.add_argument("name", metavar="NAME")
    fetch.add_argument("--out", type=Path, required=True, help="new file on a tmpfs (e.g. /dev/shm/key)")
    fetch.add_argument("--purpose", choices=["read", "write"], default="read")
    fetch.add_argument("--key-version", type=non_negative_int, default=0, help="0 = latest enabled version")
    fetch.add_argument("--force-non-tmpfs", action="store_true", help="allow a disk-backed path (unsafe)")
    fetch.set_defaults(func=runs("sovereign.cli.node:_fetch_key"))

    dec = command(
        "decrypt",
        "decrypt a sealed dataset or model file (key from its key_ref) to a tmpfs file or stdout",
    )
    dec.add_argument("--key", help="expected key name (default: the one the file's key_ref names)")
    dec.add_argument("input", type=Path, metavar="IN")
    dec.add_argument(
        "output",
        metavar="OUT",
        help="a new file on a tmpfs (e.g. /dev/shm/x), or '-': stream to stdout (a pipe), chunk by "
        "authenticated chunk; a failure can leave earlier chunks written and exits non-zero",
    )
    dec.add_argument(
        "--force-non-tmpfs", action="store_true", help="allow plaintext on a disk-backed path (unsafe)"
    )
    dec.set_defaults(func=runs("sovereign.cli.node:_decrypt"))

    enc = command("encrypt", "seal a model output with the latest version of a model key")
    enc.add_argument("--key", required=True)
    enc.add_argument("input", type=Path, metavar="IN")
    enc.add_argument("output", type=Path, metavar="OUT")
    enc.set_defaults(func=runs("sovereign.cli.node:_encrypt"))

    run = command("run", "register once, then check key access, decrypt inputs and seal outputs")
    run.add_argument("--keys", default="", help="comma-separated keys to check read access to")
    run.add_argument("--decrypt", action="append", default=[], metavar="IN:OUT", help="repeatable")
    run.add_argument("--encrypt", action="append", default=[], metavar="KEY:IN:OUT", help="repeatable")
    run.add_argument(
        "--force-non-tmpfs",
        action="store_true",
        help="allow --decrypt outputs on a disk-backed path (unsafe)",
    )
    run.set_defaults(func=runs("sovereign.cli.node:_run"))

    _add_resident_commands(cmds, command)


def _add_resident_commands(cmds: argparse._SubParsersAction[argparse.ArgumentParser], common: object) -> None:
    """Register ``agent`` and ``exec``; ``common(name, help)`` adds the shared node options."""
    make = common  # a callable(name, text) -> ArgumentParser, from sovereign.cli.node
    agent = make("agent", "run the resident node agent: keep the lease, serve keys on a local socket")  # type: ignore[operator]
    agent.add_argument("--config", type=Path, help="node.toml (see deploy/config/node.toml)")
    agent.add_argument("--socket", type=Path, help="the local API socket (default: [agent].socket)")
    agent.set_defaults(func=runs("sovereign.cli._node_agent:_agent"))

    run = make(  # type: ignore[operator]
        "exec", "run a command under the node agent (keys over SOVEREIGN_AGENT_SOCKET); exit with its status"
    )
    run.add_argument("--config", type=Path, help="node.toml, to start an agent when none is running")
    run.add_argument(
        "--socket", type=Path, help="a running agent's socket (default: $SOVEREIGN_AGENT_SOCKET)"
    )
    run.add_argument("--keys", default="", help="comma-separated keys to check first (fail fast)")
    run.add_argument(
        "--purpose", choices=["read", "write"], default="read", help="purpose --keys are checked for"
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")
    run.set_defaults(func=runs("sovereign.cli._node_agent:_exec"))
