"""``sovereign evidence``: the arguments; the implementation is ``sovereign.cli.evidence``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from sovereign.cli._common import add_trust_argument, parse_time, positive_int
from sovereign.cli._lazy import runs

# attestation.simulate.Fault's names (importing that package loads the XML-signature stack);
# tests/unit/test_cli_lazy_imports.py checks they match
FAULTS = (
    "BAD_SIGNATURE", "FOREIGN_CHAIN", "EXPIRED_CERT", "REVOKED", "EXPIRED_COLLATERAL", "TCB_MISMATCH",
    "CHIP_ID_MISMATCH", "QE_REPORT_SIGNATURE", "QE_BINDING", "QE_IDENTITY_MISMATCH", "COLLATERAL_SIGNATURE",
    "TCB_NOT_MATCHED", "TCB_OUT_OF_DATE", "TCB_REVOKED",
)  # fmt: skip


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("evidence", help="verify or simulate TEE evidence")
    cmds = parser.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)

    ver = cmds.add_parser(
        "verify",
        help="verify an SEV-SNP report or TDX quote offline",
        description="Verify raw evidence (an SEV-SNP ATTESTATION_REPORT or a TDX quote v4/v5) against the "
        "offline collateral store and the pinned roots. Exit 0 and print the claims when valid; exit 1 "
        "with the error code and a hint otherwise.",
    )
    ver.add_argument("file", type=Path, metavar="FILE")
    ver.add_argument(
        "--collateral",
        type=Path,
        default=None,
        metavar="STORE",
        help="collateral store (default $SOVEREIGN_COLLATERAL or var/collateral)",
    )
    ver.add_argument(
        "--endorsement",
        action="append",
        type=Path,
        default=[],
        metavar="CERT",
        help="certificate that came with the evidence (VCEK/VLEK, ASK); repeatable",
    )
    ver.add_argument(
        "--at",
        type=parse_time,
        default=None,
        metavar="TIME",
        help="verify as of this ISO 8601 time (default: now)",
    )
    ver.add_argument(
        "--no-tcb",
        action="store_true",
        help="TDX: check signatures and the PCK chain only; TCB status reported as Unknown",
    )
    ver.add_argument(
        "--no-revocation-check",
        action="store_true",
        help="SEV-SNP: verify without requiring an AMD CRL current at --at (archived evidence). The claims "
        "then say revocation_checked: false, which the default policy denies (unchecked_revocation)",
    )
    add_trust_argument(ver)
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.set_defaults(func=runs("sovereign.cli.evidence:_verify"))

    _register_simulate(cmds)


def _hex(nbytes: int) -> Callable[[str], bytes]:
    def parse(text: str) -> bytes:
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None
        if len(value) > nbytes:
            raise argparse.ArgumentTypeError(f"at most {nbytes} bytes ({2 * nbytes} hex digits)")
        return value.ljust(nbytes, b"\0")

    return parse


def _register_simulate(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = cmds.add_parser(
        "simulate",
        help="mint a simulated SNP report or TDX quote with its collateral and trust profile",
        description="Mint evidence in the real SEV-SNP / TDX formats, signed by a freshly generated test PKI "
        "that carries the same X.509 extensions as AMD's and Intel's. The production trust profile refuses it.",
    )
    sim.add_argument("--tee", choices=["snp", "tdx"], required=True)
    sim.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    sim.add_argument(
        "--version",
        type=positive_int,
        default=None,
        help="SNP report 2|3|5 (default 3), TDX quote 4|5 (default 4)",
    )
    sim.add_argument("--product", choices=["Milan", "Genoa", "Turin"], default="Milan", help="SNP product")
    sim.add_argument("--signing-key", choices=["vcek", "vlek"], default="vcek", help="SNP signing key")
    sim.add_argument(
        "--body-type", type=int, choices=[2, 3], default=2, help="TDX v5 body: 2 = TDX 1.0, 3 = TDX 1.5"
    )
    sim.add_argument(
        "--measurement", type=_hex(48), default=bytes(48), metavar="HEX", help="SNP MEASUREMENT or TDX MRTD"
    )
    sim.add_argument("--report-data", type=_hex(64), default=bytes(64), metavar="HEX")
    sim.add_argument(
        "--debug", action="store_true", help="set the SNP policy DEBUG bit / TD_ATTRIBUTES.DEBUG"
    )
    sim.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=FAULTS,
        help="inject a fault (repeatable)",
    )
    sim.add_argument(
        "--at", type=parse_time, default=None, metavar="TIME", help="mint as of this time (default now)"
    )
    sim.add_argument(
        "--save-pki",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save this test PKI (pki.json, trust.json, collateral/) for `serve --trust DIR/trust.json "
        "--collateral DIR/collateral` and `node --provider simulated-snp|simulated-tdx --sim-pki DIR`",
    )
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=runs("sovereign.cli._simulate:_simulate"))
