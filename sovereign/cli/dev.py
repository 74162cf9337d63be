"""``sovereign dev up|down``: the whole control plane for development, in one foreground command.

``dev up`` starts a dev OpenBao (in memory, bootstrapped), the dev Keycloak realm and ``sovereign
serve`` with the demo policy and the simulation trust profile of a saved simulator PKI
(``DIR/sim-pki``), creates the demo keys, seals a sample WebDataset shard, writes ``DIR/node.toml`` for a
simulated node, prints what to export (like ``vault server -dev``) and runs until Ctrl-C, SIGTERM or
``dev down``; then it stops every child. ``DIR/dev-up.json`` records its pid and its children's.
Never for production: the realm is a stand-in and the PKI a test PKI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from attestation.simulate import SimulatedPki
from attestation.simulate.persist import PkiFileError, load_pki
from sovereign.cli._output import fail, print_json
from sovereign.cli._signals import stop_signals_interrupt
from sovereign.cli._sim_pki import PKI_FILE, save_sim_pki

STATE_FILE = "dev-up.json"


@dataclass
class _Failure:
    message: str
    code: str
    hint: str = ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _read_state(directory: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _pki(directory: Path, now: datetime) -> Path:
    """The saved simulator PKI in ``directory/sim-pki`` (made on first use, reused afterwards)."""
    target = directory / "sim-pki"
    try:
        load_pki((target / PKI_FILE).read_bytes())
        return target
    except (OSError, PkiFileError):
        pass
    print(
        "generating the simulator PKI (test roots; the production trust profile refuses them) ...", flush=True
    )
    save_sim_pki(SimulatedPki.generate(now), target, now)
    return target


def _up(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    state = _read_state(directory)
    if state and _alive(int(state.get("pid", 0))):
        return fail(
            _Failure(f"`dev up` already runs for {directory} (pid {state['pid']})", "DEV_ALREADY_UP", "use it, "
                     f"or stop it: sovereign dev down --dir {args.dir}"),
            as_json=args.json,
        )  # fmt: skip
    with stop_signals_interrupt():
        try:
            return _run(directory, args)
        except KeyboardInterrupt:
            print("stopping the dev stack", file=sys.stderr, flush=True)
            return 0
        finally:
            with contextlib.suppress(FileNotFoundError):
                (directory / STATE_FILE).unlink()


def _run(directory: Path, args: argparse.Namespace) -> int:
    # Imported here: these start processes and pull in the control plane; `dev down` needs none of it.
    from kms.domain.catalogue import KeyKind
    from kms.envelope.names import format_key_ref
    from kms.errors import KmsError
    from kms.openbao.bootstrap import write_private
    from sovereign.client import AdminClient, records
    from sovereign.demo import realm, training
    from sovereign.demo.lifecycle import _owner_catalogue, operator_channel, sign_in
    from sovereign.demo.site import SNP_MEASUREMENT, ControlPlane, Inputs, start_bao

    now = datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    sim_pki = _pki(directory, now)
    run = directory / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(mode=0o700)
    policy = run / "policy.toml"
    policy.write_text(resources.files("policies.defaults").joinpath("demo.toml").read_text())
    with ExitStack() as stack:
        try:
            idp = realm.start()
        except realm.StandinError as exc:
            return fail(
                _Failure(str(exc)[:2000], "DEV_REALM_FAILED", "the dev realm needs node and npm"),
                as_json=args.json,
            )
        stack.callback(idp.stop)
        try:
            bao = start_bao(run)
        except KmsError as err:
            return fail(err, as_json=args.json)
        stack.callback(bao.server.stop)
        root_token = write_private(run / "bao-root-token", bao.server.root_token or "")
        inputs = Inputs(sim_pki / "trust.json", sim_pki / "collateral", policy)
        try:
            plane = ControlPlane(run, inputs, bao, oidc_issuer=idp.issuer(realm.REALM)).start()
        except RuntimeError as exc:
            return fail(
                _Failure(str(exc)[-2000:], "DEV_SERVE_FAILED", "read the output above"), as_json=args.json
            )
        stack.callback(plane.stop)
        assert plane.ca is not None and plane.proc is not None
        channel = operator_channel(plane, plane.ca.read_bytes(), sign_in(idp, "alice"))
        stack.callback(channel.close)
        admin = AdminClient(channel, timeout=30)
        admin.create_key("dataset/train", records.KeyKind.DATASET)
        admin.create_key("model/main", records.KeyKind.MODEL)
        key = _owner_catalogue(plane, bao).unwrap("dataset/train", kind=KeyKind.DATASET)
        shard = directory / "data" / "shard-000.tar.sealed"
        data, _ = training.shard_bytes()
        training.seal_shard(shard, key.plaintext, format_key_ref(key.name, key.version), data)
        del key
        node_toml = directory / "node.toml"
        node_toml.write_text(
            training.node_toml(
                server=plane.target, ca=plane.ca, sim_pki=sim_pki, socket=directory / "agent.sock",
                measurement=SNP_MEASUREMENT, name="dev-trainer",
            )
        )  # fmt: skip
        env = {
            "SOVEREIGN_NODE_SERVER": plane.target,
            "SOVEREIGN_NODE_CA": str(plane.ca),
            "SOVEREIGN_NODE_NAME": "dev-trainer",
            "SOVEREIGN_NODE_GROUPS": "trainers",
            "SOVEREIGN_NODE_PROVIDER": "simulated-snp",
            "SOVEREIGN_NODE_SIM_PKI": str(sim_pki),
            "SOVEREIGN_NODE_SIM_MEASUREMENT": SNP_MEASUREMENT.hex(),
        }
        # What `sovereign login`, `admin` and `audit` read, so operators need no flags either.
        operator_env = {
            "SOVEREIGN_ADMIN_ADDR": plane.admin_target,
            "SOVEREIGN_CA": str(plane.ca),
            "SOVEREIGN_OIDC_SERVER_URL": idp.server_url,
            "SOVEREIGN_OIDC_REALM": realm.REALM,
            "SOVEREIGN_OIDC_CLIENT_ID": realm.CLIENT_ID,
        }
        children = {"openbao": bao.server.pid, "serve": plane.proc.pid, "realm": idp.process.pid}
        state = {
            "pid": os.getpid(),
            "dir": str(directory),
            "children": children,
            "env": env,
            "operator_env": operator_env,
            "node_toml": str(node_toml),
            "shard": str(shard),
            "admin": plane.admin_target,
            "oidc_issuer": idp.issuer(realm.REALM),
            "bao_addr": bao.server.addr,
            "bao_root_token_file": str(root_token),
        }
        state_path = directory / STATE_FILE
        state_path.write_text(json.dumps(state, indent=2))
        state_path.chmod(0o600)
        if args.json:
            print_json({"ok": True, **state})
        else:
            _print_banner(state, args.dir)
        sys.stdout.flush()
        while all(_alive(pid) for pid in children.values() if pid):
            time.sleep(0.5)
        print("a dev component exited; stopping the others", file=sys.stderr, flush=True)
        return 1
    return 0


def _print_banner(state: dict[str, Any], directory: Path) -> None:
    print("sovereign dev stack is up (development only: in-memory OpenBao, test PKI, stand-in realm)\n")
    print("For nodes in another terminal, export:")
    for name, value in state["env"].items():
        print(f"  export {name}={value}")
    print(f"\nor pass --config {state['node_toml']}. Then, for example:")
    print(
        f"  sovereign node exec --keys dataset/train -- python examples/train.py {state['shard']} "
        f"{state['dir']}/ckpt.safetensors.sealed"
    )
    print("\nOperators, in another terminal, export:")
    for name, value in state["operator_env"].items():
        print(f"  export {name}={value}")
    print("then sign in as alice (admin; password alice-password) or carol (auditor; carol-password):")
    print("  sovereign login --username alice --password-stdin <<< alice-password")
    print("  sovereign admin nodes list; sovereign audit tail (as carol)")
    print(f"Ctrl-C here, or `sovereign dev down --dir {directory}`, stops everything.", flush=True)


def _down(args: argparse.Namespace) -> int:
    directory: Path = args.dir.resolve()
    state = _read_state(directory)
    if state is None:
        return fail(
            _Failure(f"no `dev up` state in {directory}", "DEV_NOT_UP", "start one with `sovereign dev up`"),
            as_json=args.json,
        )
    pid = int(state.get("pid", 0))
    children = [int(p) for p in dict(state.get("children", {})).values() if p]
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in (pid, *children) if p):
        time.sleep(0.2)
    for child in children:  # the parent could not stop them (it was killed): do it here
        if _alive(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (directory / STATE_FILE).unlink()
    if args.json:
        print_json({"ok": True, "stopped": [pid, *children]})
    else:
        print(f"stopped the dev stack in {directory}")
    return 0
