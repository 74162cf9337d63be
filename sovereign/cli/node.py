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
from enclave.config import NodeConfig, build_client, build_gpu_source, build_provider
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from kms.envelope import EnvelopeError
from sovereign.cli._output import fail, print_json


@dataclass
class _IoError:
    message: str
    code: str = "IO_ERROR"
    hint: str = "check the path and its permissions"


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
