"""``sovereign kms bootstrap|dev|policy``: prepare OpenBao for the control plane."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from attestation.coded import CodedError
from kms.config import BAO_TOKEN_ENV, OPTION, env_value
from kms.errors import Code, KmsError
from kms.openbao import bootstrap as boot
from kms.openbao.data_owner import OWNER_POLICY_HCL
from kms.openbao.vault import BaoSettings, TokenAuth
from sovereign.cli._installed import bao_endpoint, refuse_root_on_service_files
from sovereign.cli._output import fail, print_json, print_table
from sovereign.cli._signals import stop_signals_interrupt
from sovereign.devtools.openbao_server import OpenBaoServer


def host_bao_addr() -> str | None:
    """The installed host config's OpenBao address, if any."""
    return _from_host_config("bao_addr")


def host_bao_ca_cert() -> str | None:
    """The installed host config's CA for OpenBao's TLS, if any."""
    return _from_host_config("bao_ca_cert")


MAX_TOKEN = 4096


def _token_from_stdin() -> dict[str, str]:
    """``--token-file -``: the token on standard input, for a command run as another user, which cannot
    open the operator's token file (``runuser -u sovereign -- sovereign kms bootstrap --token-file - <
    /root/token`` works: the shell opens the file, the command only reads the descriptor)."""
    token = sys.stdin.read(MAX_TOKEN + 1).strip()
    if not token or len(token) > MAX_TOKEN or not token.isprintable():
        raise KmsError(
            "--token-file -: no OpenBao token on standard input",
            code=Code.KMS_CONFIG_INVALID,
            hint="pipe or redirect the token file: ... --token-file - < TOKEN_FILE",
        )
    unrelated = {k: v for k, v in os.environ.items() if not k.endswith("TOKEN_FILE")}  # stdin wins
    return {**unrelated, BAO_TOKEN_ENV: token}


def bao_settings(args: argparse.Namespace, *, operator: bool = False) -> BaoSettings:
    """Connection settings from flags and environment; ``operator`` ignores AppRole (token only)."""
    stdin = args.token_file is not None and str(args.token_file) == "-"
    return BaoSettings.resolve(
        _token_from_stdin() if stdin else None,
        addr=args.addr or _from_host_config("bao_addr"),
        token_file=None if stdin else args.token_file,
        role_id=args.role_id,
        secret_id_file=args.secret_id_file,
        ca_cert=args.ca_cert or _from_host_config("bao_ca_cert"),
        approle=not operator,
    )


def _from_host_config(name: str) -> str | None:
    """Where OpenBao is, from the host's config when neither flag nor environment says (credentials
    never come from there: they stay the operator's own)."""
    if env_value(OPTION[name], os.environ) is not None:
        return None
    return bao_endpoint(name)


def _print_report(report: boot.BootstrapReport, as_json: bool) -> None:
    if as_json:
        print_json({"ok": True, **report.to_dict()})
        return
    print_table([{"step": s, "status": st} for s, st in report.steps], ["step", "status"])
    print(f"role id:        {report.role_id}")
    print(f"secret id file: {report.secret_id_file} (new secret id issued on every run)")
    if report.owner_role_id:
        print(f"data owner role id:        {report.owner_role_id} (also in {report.owner_role_id_file})")
        print(f"data owner secret id file: {report.owner_secret_id_file} (give both to the data owner)")
    print("nothing else changed" if not report.changed else "OpenBao configuration changed")


def _bootstrap(args: argparse.Namespace) -> int:
    try:
        # the AppRole files are the service's: root would leave them unreadable to it
        refuse_root_on_service_files(args.out, "the credentials folder", Code.KMS_CONFIG_INVALID.value)
        settings = bao_settings(args, operator=True)
        assert isinstance(settings.auth, TokenAuth)
        report = boot.bootstrap(settings.addr, settings.auth.token, args.out, ca_cert=settings.ca_cert)
    except (KmsError, CodedError) as err:
        return fail(err, as_json=args.json)
    _print_report(report, args.json)
    return 0


def _dev(args: argparse.Namespace) -> int:
    with stop_signals_interrupt():  # SIGTERM must stop OpenBao too, not leave it running unsealed
        return _dev_foreground(args)


def _dev_foreground(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sovereign-bao-"))
    try:
        server = OpenBaoServer.dev(workdir, port=args.port)
    except KmsError as err:
        return fail(err, as_json=args.json)
    try:
        assert server.root_token is not None
        root_file = boot.write_private(workdir / "root-token", server.root_token)
        report = boot.bootstrap(server.addr, server.root_token, workdir / "approle")
        info = {
            "addr": server.addr,
            "role_id": report.role_id,
            "secret_id_file": report.secret_id_file,
            "root_token_file": str(root_file),
            "audit_log": str(server.audit_log),
            "log": str(server.log_path),
        }
        if args.json:
            print_json({"ok": True, **info})
        else:
            print(f"OpenBao dev server at {server.addr} (in memory: keys vanish when it stops)")
            print(f"  export SOVEREIGN_BAO_ADDR={server.addr}")
            print(f"  export SOVEREIGN_BAO_ROLE_ID={report.role_id}")
            print(f"  export SOVEREIGN_BAO_SECRET_ID_FILE={report.secret_id_file}")
            print(f"operator token file: {root_file}; audit log: {server.audit_log}")
            print("Ctrl-C stops it.")
        sys.stdout.flush()
        while server.running:
            time.sleep(0.5)
        print(f"OpenBao exited; log tail:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KmsError as err:
        return fail(err, as_json=args.json)
    except KeyboardInterrupt:
        print("stopping OpenBao", file=sys.stderr)
        return 0
    finally:
        server.stop()


def _policy(args: argparse.Namespace) -> int:
    sys.stdout.write(OWNER_POLICY_HCL if args.data_owner else boot.POLICY_HCL)
    return 0
