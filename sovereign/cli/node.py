"""``sovereign node register|fetch-key|decrypt|encrypt|run``: the node agent, one process per session;
``sovereign node agent|exec`` (``sovereign.cli._node_agent``): the resident agent and workloads under it.

The node's keys live only in process memory, so every one-shot command registers first (fresh keys,
fresh evidence) and then does its work; nothing about the session is saved.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from enclave.agent import PROC_MOUNTS, NodeAgent, check_plaintext_output
from enclave.config import (
    GPU_CHOICES,
    PROVIDER_CHOICES,
    NodeConfig,
    build_client,
    build_gpu_source,
    build_provider,
)
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.providers.gpu import REPORT_FAULTS
from kms.envelope import EnvelopeError
from sovereign.cli import _node_agent as node_agent
from sovereign.cli._common import non_negative_int, positive_seconds
from sovereign.cli._output import fail, print_json


@dataclass
class _IoError:
    message: str
    code: str = "IO_ERROR"
    hint: str = "check the path and its permissions"


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

    command("register", "attest and register this node, print the outcome").set_defaults(func=_register)

    fetch = command("fetch-key", "fetch a data key into a new 0600 file on a tmpfs")
    fetch.add_argument("name", metavar="NAME")
    fetch.add_argument("--out", type=Path, required=True, help="new file on a tmpfs (e.g. /dev/shm/key)")
    fetch.add_argument("--purpose", choices=["read", "write"], default="read")
    fetch.add_argument("--key-version", type=non_negative_int, default=0, help="0 = latest enabled version")
    fetch.add_argument("--force-non-tmpfs", action="store_true", help="allow a disk-backed path (unsafe)")
    fetch.set_defaults(func=_fetch_key)

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
    dec.set_defaults(func=_decrypt)

    enc = command("encrypt", "seal a model output with the latest version of a model key")
    enc.add_argument("--key", required=True)
    enc.add_argument("input", type=Path, metavar="IN")
    enc.add_argument("output", type=Path, metavar="OUT")
    enc.set_defaults(func=_encrypt)

    run = command("run", "register once, then check key access, decrypt inputs and seal outputs")
    run.add_argument("--keys", default="", help="comma-separated keys to check read access to")
    run.add_argument("--decrypt", action="append", default=[], metavar="IN:OUT", help="repeatable")
    run.add_argument("--encrypt", action="append", default=[], metavar="KEY:IN:OUT", help="repeatable")
    run.add_argument(
        "--force-non-tmpfs",
        action="store_true",
        help="allow --decrypt outputs on a disk-backed path (unsafe)",
    )
    run.set_defaults(func=_run)

    node_agent.add_commands(cmds, command)


@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator[tuple[NodeAgent, dict[str, Any]]]:
    config = NodeConfig.resolve(
        server=args.server,
        node_name=args.node_name,
        ca=args.ca,
        insecure_dev=args.insecure_dev,
        provider=args.provider,
        groups=args.group,
        timeout=args.timeout,
        sim_pki=args.sim_pki,
        sim_measurement=args.sim_measurement,
        sim_gpus=args.sim_gpus,
        sim_gpu_fault=args.sim_gpu_fault,
        gpu=args.gpu,
        require_gpus=args.require_gpus,
    )
    provider = build_provider(config)
    gpus = build_gpu_source(config)
    with build_client(config) as client:
        agent = NodeAgent(
            client,
            provider,
            NodeIdentity.generate(),
            node_name=config.node_name,
            groups=config.groups,
            gpus=gpus,
        )
        registration = agent.require_attested(agent.register())
        yield agent, registration.to_dict()


def _guarded(args: argparse.Namespace, work: Any) -> int:
    try:
        return int(work())
    except (NodeError, EnvelopeError) as err:
        return fail(err, as_json=args.json)
    except OSError as err:
        return fail(_IoError(f"{err.filename or ''}: {err.strerror or err}"), as_json=args.json)


def _report(args: argparse.Namespace, out: dict[str, Any], text: str) -> int:
    if args.json:
        print_json({"ok": True, **out})
    else:
        print(text)
    return 0


def _register(args: argparse.Namespace) -> int:
    def work() -> int:
        with _session(args) as (agent, registration):
            lease = registration["lease"]
            return _report(
                args,
                {"registration": registration},
                f"node {agent.node_id} ({agent.provider.name}) is ATTESTED until {lease['expires_at']}; "
                "its keys end with this process",
            )

    return _guarded(args, work)


def _fetch_key(args: argparse.Namespace) -> int:
    def work() -> int:
        with _session(args) as (agent, registration):
            released, path = agent.fetch_key_to_file(
                args.name,
                args.out,
                purpose=args.purpose,
                key_version=args.key_version,
                force_non_tmpfs=args.force_non_tmpfs,
            )
            info = {
                "key_name": released.key_name,
                "key_version": released.key_version,
                "purpose": released.purpose,
                "audit_sequence": released.audit_sequence,
                "lease_expires_at": released.lease_expires_at.isoformat(),
            }
            return _report(
                args,
                {"registration": registration, "key": info, "path": str(path)},
                f"wrote {released.key_name} v{released.key_version} to {path} "
                f"(audit sequence {released.audit_sequence})",
            )

    return _guarded(args, work)


def _decrypt(args: argparse.Namespace) -> int:
    stdout = sys.stdout  # taken before the redirect below: with OUT '-' it carries the plaintext

    def work() -> int:
        out: Any = stdout.buffer if args.output == "-" else Path(args.output)
        # Checked before registering: no key is released for an output that would put plaintext on disk.
        check_plaintext_output(out, mounts=PROC_MOUNTS.read_text(), force_non_tmpfs=args.force_non_tmpfs)
        with _session(args) as (agent, registration):
            result = agent.decrypt(args.key, args.input, out, force_non_tmpfs=args.force_non_tmpfs)
            if args.output == "-":
                out.flush()
            return _report(
                args,
                {"registration": registration, "file": asdict(result)},
                f"decrypted {args.input} -> {args.output} with {result.key_name} v{result.key_version} "
                f"({result.plaintext_bytes} bytes)",
            )

    if args.output != "-":
        return _guarded(args, work)
    with contextlib.redirect_stdout(sys.stderr):  # reports and errors must not mix with the plaintext
        return _guarded(args, work)


def _encrypt(args: argparse.Namespace) -> int:
    def work() -> int:
        with _session(args) as (agent, registration):
            result = agent.encrypt(args.key, args.input, args.output)
            return _report(
                args,
                {"registration": registration, "file": asdict(result)},
                f"sealed {args.input} -> {args.output} with {result.key_name} v{result.key_version}",
            )

    return _guarded(args, work)


def _split(value: str, parts: int, form: str) -> list[str]:
    items = value.split(":")
    if len(items) != parts or not all(items):
        raise NodeError(f"{value!r} is not {form}", code=NodeCode.CONFIG_INVALID)
    return items


def _run(args: argparse.Namespace) -> int:
    def work() -> int:
        decrypts = [_split(v, 2, "IN:OUT") for v in args.decrypt]
        encrypts = [_split(v, 3, "KEY:IN:OUT") for v in args.encrypt]
        mounts = PROC_MOUNTS.read_text()
        for _, dst in decrypts:  # before registering, as `decrypt` does
            check_plaintext_output(Path(dst), mounts=mounts, force_non_tmpfs=args.force_non_tmpfs)
        with _session(args) as (agent, registration):
            checked = []
            for name in filter(None, (k.strip() for k in args.keys.split(","))):
                released = agent.release(name, "read")
                checked.append({"key_name": name, "key_version": released.key_version})
            files = [
                asdict(agent.decrypt(None, src, dst, force_non_tmpfs=args.force_non_tmpfs))
                for src, dst in decrypts
            ]
            files += [asdict(agent.encrypt(key, src, dst)) for key, src, dst in encrypts]
            return _report(
                args,
                {"registration": registration, "keys": checked, "files": files},
                f"node {agent.node_id}: {len(checked)} keys checked, {len(files)} files processed",
            )

    return _guarded(args, work)
