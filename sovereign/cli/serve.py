"""``sovereign serve``: run the control plane (node port, KeyRelease over mutual TLS, operator port)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from attestation.errors import AttestationError
from kms.clock import Clock, OffsetFileClock, system_clock
from kms.config import OPTIONS, ServerConfig, config_path, load_config, to_args
from kms.errors import Code, KmsError
from kms.server import replicas
from kms.server.app import ControlPlane, build, serve
from kms.server.monitoring import serve_http
from policies.errors import PolicyError
from sovereign.cli._common import load_trust
from sovereign.cli._output import fail
from sovereign.console.server import start_console


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        names = [name for o in OPTIONS for name in (o.name, *o.renamed_from)]
        # no --config: the host's own ($SOVEREIGN_CONFIG, or the installed /etc/sovereign/sovereign.toml)
        config = load_config(
            args.config or config_path(), overrides={name: getattr(args, name) for name in names}
        )
        trust = load_trust(None if config.trust == "production" else Path(config.trust))
        clock = dev_clock(config)
        plane = build(config, trust=trust, clock=clock)
    except (KmsError, AttestationError, PolicyError) as err:
        return fail(err, as_json=False)
    try:
        return asyncio.run(_run(config, plane, clock))
    except KmsError as err:
        return fail(err, as_json=False)
    finally:
        plane.close()


def dev_clock(config: ServerConfig) -> Clock:
    """The system clock, or (``--dev-clock-file``, dev trust only: ``load_config`` refuses it otherwise)
    the system clock shifted by the file's offset."""
    if not config.dev_clock_file:
        return system_clock
    try:
        return OffsetFileClock(Path(config.dev_clock_file)).load()
    except ValueError as err:
        raise KmsError(
            str(err), code=Code.SERVER_CONFIG_INVALID, hint="write a number of seconds, e.g. 90 or -90"
        ) from None


async def _run(config: ServerConfig, plane: ControlPlane, clock: Clock = system_clock) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = await serve(config, plane, clock=clock)
    others = []
    console = None
    try:
        if config.console_listen and not config.replica:
            console = await start_console(config, plane, running)
        if config.processes > 1:
            again = dataclasses.replace(
                config,
                listen=running.node_address,
                release_listen=running.release_address,
                processes=1,
                replica=True,
                metrics_port=0,
            )
            command = [sys.executable, "-m", "sovereign", "serve", *to_args(again)]
            others = await asyncio.to_thread(replicas.start, command, config.processes - 1)
        endpoint = None
        if config.metrics_port and not config.replica:
            endpoint = serve_http(
                plane.metrics.registry, config.metrics_port, healthy=lambda: not stop.is_set()
            )
            plane.closers.append(endpoint.close)
        scheme = "plaintext (INSECURE, dev only)" if config.insecure_dev else "TLS"
        release = "" if config.insecure_dev else f"; key release on {running.release_address} (mutual TLS)"
        admin = f"; operators on {running.admin_address}" if running.admin_address else " (replica)"
        print(f"listening on {running.node_address} ({scheme}){release}{admin}", flush=True)
        if config.trust != "production" and not config.replica:
            print(
                f"DEV trust profile {config.trust} (--dev-trust): evidence whose chain ends in a root "
                "other than AMD's or Intel's is marked simulated",
                flush=True,
            )
        if running.ca_path is not None and not config.replica:
            print(f"dev CA for clients to pin: {running.ca_path}", flush=True)
        if endpoint is not None:
            print(f"metrics on http://127.0.0.1:{endpoint.port}/metrics (health: /healthz)", flush=True)
        if console is not None:
            print(f"console on {console.url}", flush=True)
        await stop.wait()
        print("stopping", file=sys.stderr, flush=True)
    finally:
        if console is not None:
            await console.stop()
        await asyncio.to_thread(replicas.stop, others)
        await running.stop()
    return 0
