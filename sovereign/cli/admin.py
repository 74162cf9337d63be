"""``sovereign admin``: operator commands over the control plane's operator endpoint.

Every call goes over TLS pinned to ``--ca`` (the control plane's CA) and carries the token cached by
``sovereign login`` (refused locally, with the login command, once it has expired). Changes held by
the two-person rule print the pending change; a second operator applies it with ``pending approve``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kms.errors import Code, KmsError
from kms.oidc.errors import AuthError
from policies import PolicyError, load_policy
from sovereign.cli import _admin_views as views
from sovereign.cli._installed import operator_address, operator_ca
from sovereign.cli._output import fail, print_ok
from sovereign.cli._session import operator_token
from sovereign.cli.commands.admin import Call
from sovereign.client import AdminClient, OperatorError, operator_channel, to_json
from sovereign.client.errors import read_ca
from sovereign.client.records import PolicyPut


def admin_client(server: str, ca: Path, token_cache: Path | None) -> AdminClient:
    """The Admin client over TLS pinned to ``ca``, with the operator's bearer token on every call
    (refreshed first when it is about to expire)."""
    token = operator_token(token_cache)
    channel = operator_channel(server, ca=read_ca(ca))
    return AdminClient(channel, metadata=token.metadata(), target=server)


def _run(call: Call) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        server = args.server or operator_address()
        ca = Path(args.ca) if args.ca else operator_ca()
        try:
            if ca is None:
                raise KmsError(
                    "no CA to pin for the operator port",
                    code=Code.REQUEST_INVALID,
                    hint="give --ca or set SOVEREIGN_CA (serve's --tls-ca, or ca.pem in its --dev-tls folder)",
                )
            client = admin_client(server, ca, args.token_cache)
            reply = call(client, args)
            if args.json:
                print_ok(to_json(reply))
            elif isinstance(reply, PolicyPut) and reply.applied is not None:
                before = client.get_policy() if reply.applied.dry_run else None
                views.show_applied(reply.applied, before, args.policy_text)
            else:
                views.show(reply, datetime.now(UTC))
        except (AuthError, OperatorError, KmsError, PolicyError) as err:
            return fail(err, as_json=args.json)
        except OSError as err:
            return fail(KmsError(f"cannot read a file: {err}", code=Code.REQUEST_INVALID), as_json=args.json)
        return 0

    return run


def _policy_put(client: AdminClient, args: argparse.Namespace) -> PolicyPut:
    # Checked here first, so a mistake names the file and line (the server sees only the text).
    args.policy_text = args.file.read_text()
    load_policy(args.file)
    try:
        return client.put_policy(args.policy_text, args.expected_version, dry_run=args.dry_run)
    except OperatorError as err:
        # the server names the text it was sent after the RPC; the operator knows it as the file
        if err.code.startswith("POLICY_") and err.message.startswith("PutPolicy"):
            err.message = f"{args.file}{err.message.removeprefix('PutPolicy')}"
        raise


run_policy_put = _run(_policy_put)
