"""``sovereign node agent|exec``: the resident node agent and running a workload under it.

``agent --config node.toml`` registers once, keeps the lease, holds keys in memory and serves the local
API (``enclave.local_server``) until SIGTERM/SIGINT. ``exec [--keys K1,K2] -- CMD ARGS...`` uses a
running agent (``--socket``, ``$SOVEREIGN_AGENT_SOCKET``, or the socket in ``--config``) or starts one
for the command's life, checks the named keys first, runs the command with SOVEREIGN_AGENT_SOCKET set
and returns its exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from enclave.agent import NodeAgent
from enclave.config import (
    AgentSettings,
    NodeConfig,
    build_client,
    build_gpu_source,
    build_provider,
    load_node_toml,
)
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.local_server import LocalApiServer, resolve_group
from enclave.resident import ResidentAgent, Timing
from enclave.workload import agent_api
from enclave.workload.errors import WorkloadError
from enclave.workload.keys import AGENT_SOCKET_ENV, AgentSocketKeySource
from sovereign.cli._output import fail

log = logging.getLogger("sovereign.node")
READY_TIMEOUT = 60.0


@dataclass
class _Failure:
    message: str
    code: str
    hint: str = ""


def _settings(args: argparse.Namespace) -> tuple[NodeConfig, AgentSettings]:
    if args.config is not None:
        config, settings = load_node_toml(args.config)
    else:
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
        settings = AgentSettings()
    if args.socket is not None:
        settings = replace(settings, socket=args.socket)
    return config, settings


@contextlib.contextmanager
def _running_agent(
    config: NodeConfig, settings: AgentSettings
) -> Iterator[tuple[ResidentAgent, LocalApiServer]]:
    provider = build_provider(config)
    gpus = build_gpu_source(config)  # the same GPUs answer every registration and renewal
    client = build_client(config)

    def make_agent() -> NodeAgent:
        return NodeAgent(
            client,
            provider,
            NodeIdentity.generate(),
            node_name=config.node_name,
            groups=config.groups,
            gpus=gpus,
        )

    resident = ResidentAgent(
        make_agent,
        revocation_action=settings.revocation_action,
        timing=Timing(check_interval=settings.check_interval),
    )
    server = LocalApiServer(
        resident,
        settings.socket,
        mode=settings.socket_mode,
        group=resolve_group(settings.socket_group),
        allowed_uids=settings.allowed_uids,
        allowed_gids=settings.allowed_gids,
        hand_out_keys=settings.hand_out_keys,
    )
    metrics = None
    try:
        server.start()
        if settings.metrics_listen:
            # prometheus_client only for an agent that serves metrics (most do not)
            from enclave.agent_metrics import AgentCollector, serve_metrics

            metrics = serve_metrics(
                AgentCollector(resident, lambda: server.streams.sealing), settings.metrics_listen
            )
            host = metrics.server.server_address[0]
            log.info("node agent: metrics on http://%s:%d/metrics", host, metrics.port)
        resident.start()
        yield resident, server
    finally:
        if metrics is not None:
            metrics.close()
        server.close()
        resident.stop()
        client.close()


def _not_attested(resident: ResidentAgent) -> NodeError:
    if resident.last_error is not None:
        return resident.last_error
    return NodeError(f"the node agent is {resident.state.value}", code=NodeCode.NODE_NOT_ATTESTED)


def _agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        config, settings = _settings(args)
        with _running_agent(config, settings) as (resident, server):
            print(f"node agent: local API on {server.path}; {AGENT_SOCKET_ENV}={server.path}", flush=True)
            if resident.wait_ready(READY_TIMEOUT):
                print(f"node agent: node {resident.node_id} ATTESTED", flush=True)
                for name in settings.keys:
                    try:
                        resident.key(name, "read", 0)
                    except Exception as exc:  # a missing key is logged; the agent keeps serving the others
                        log.error("node agent: cannot hold %s: %s", name, exc)
            else:
                err = _not_attested(resident)
                log.error("node agent: not attested yet (%s); still trying", err.code.value)
            while not stop.wait(1.0):
                pass
            print("node agent: stopping", file=sys.stderr, flush=True)
        return 0
    except NodeError as err:
        return fail(err, as_json=args.json)


def _live(path: Path) -> bool:
    try:
        return agent_api.call(str(path), {"op": "status"}, timeout=5).get("ok") is True
    except (OSError, agent_api.ApiError):
        return False


def _exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        return fail(
            _Failure("no command given", NodeCode.CONFIG_INVALID.value, "sovereign node exec -- CMD ARGS"),
            as_json=args.json,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    named = args.socket or (Path(os.environ[AGENT_SOCKET_ENV]) if os.environ.get(AGENT_SOCKET_ENV) else None)
    try:
        if named is not None:
            if not _live(named):
                return fail(
                    _Failure(
                        f"no node agent answers on {named}",
                        "WORKLOAD_AGENT_UNAVAILABLE",
                        "start one (`sovereign node agent --config node.toml`) or drop --socket/"
                        f"{AGENT_SOCKET_ENV} to start one for this command",
                    ),
                    as_json=args.json,
                )
            return _run_under(named, argv, args)
        config, settings = _settings(args)
        if args.config is not None and _live(settings.socket):
            return _run_under(settings.socket, argv, args)
        with tempfile.TemporaryDirectory(prefix="sovereign-agent-") as private:
            os.chmod(private, 0o700)
            own = replace(settings, socket=Path(private) / "agent.sock")
            with _running_agent(config, own) as (resident, server):
                if not resident.wait_first_attempt(READY_TIMEOUT):  # fail fast, with the code
                    return fail(_not_attested(resident), as_json=args.json)
                return _run_under(server.path, argv, args)
    except NodeError as err:
        return fail(err, as_json=args.json)


def _run_under(socket_path: Path, argv: list[str], args: argparse.Namespace) -> int:
    source = AgentSocketKeySource(str(socket_path))
    wanted = [k.strip() for k in args.keys.split(",") if k.strip()]
    if wanted:
        try:
            refs = source.check(wanted, args.purpose)
        except WorkloadError as err:
            reason = getattr(err, "reason", "")
            return fail(_Failure(err.message, reason or err.code.value, err.hint), as_json=args.json)
        print(f"node exec: keys available: {', '.join(refs)}", file=sys.stderr, flush=True)
    env = {**os.environ, AGENT_SOCKET_ENV: str(socket_path)}
    try:
        child = subprocess.Popen(argv, env=env, start_new_session=True)
    except OSError as exc:
        return fail(
            _Failure(f"cannot run {argv[0]}: {exc.strerror}", "EXEC_FAILED", "check the command"),
            as_json=args.json,
        )
    try:
        agent_api.call(str(socket_path), {"op": "attach", "pid": child.pid}, timeout=5)
    except (OSError, agent_api.ApiError):
        log.warning("node exec: could not attach workload %d to the agent", child.pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status if status >= 0 else 128 - status
