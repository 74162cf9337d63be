"""``sovereign collateral``: the arguments; the implementation is ``sovereign.cli.collateral``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.cli._common import add_trust_argument, parse_time
from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("collateral", help="manage the offline attestation collateral store")
    cmds = parser.add_subparsers(dest="collateral_command", metavar="ACTION", required=True)

    imp = cmds.add_parser(
        "import",
        help="check and add collateral (a signed bundle, or AMD/Intel files) to the store",
        description="Import a signed collateral bundle (--bundle, checked against --signer-key) or loose "
        "collateral files: AMD ARK/ASK/ASVK/VCEK/VLEK certificates and KDS cert_chain files (PEM or DER), "
        "CRLs, Intel TCB info and QE identity JSON as Intel PCS serves them, and dcap-qvl style collateral "
        "bundles. Certificates must chain to a pinned root; CRL, TCB info and QE identity signatures are "
        "verified; anything older than what the store holds is refused (rollback). All or nothing.",
    )
    imp.add_argument("files", nargs="*", type=Path, metavar="FILE")
    imp.add_argument("--bundle", type=Path, help="signed collateral bundle (sovereign collateral fetch)")
    imp.add_argument("--signer-key", type=Path, action="append", default=[], help="pinned signer PEM")
    _store_argument(imp)
    add_trust_argument(imp)
    imp.add_argument("--json", action="store_true", help="machine-readable output")
    imp.set_defaults(func=runs("sovereign.cli.collateral:_import"))

    ls = cmds.add_parser("list", help="list what the store holds")
    _store_argument(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=runs("sovereign.cli.collateral:_list"))

    st = cmds.add_parser("status", help="what expires when, and the earliest nextUpdate")
    _store_argument(st)
    st.add_argument(
        "--at", type=parse_time, default="now", help="evaluate at this ISO 8601 time (default: now)"
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=runs("sovereign.cli.collateral:_status"))

    fetch = cmds.add_parser(
        "fetch",
        help="connected side: get collateral from AMD KDS / Intel PCS into a signed bundle",
        description="SNP: --snp PRODUCT:CHIP_ID_HEX:TCB_HEX (VCEK, ASK/ARK chain, CRL) or --vlek PRODUCT "
        "(ASVK/ARK chain, CRL). TDX: --fmspc HEX (TCB info and its signing chain), plus QE identity, the "
        "PCK CRL and the root CA CRL. GPU: --gpu EVIDENCE.json (NVIDIA GPU evidence list) fetches its "
        "driver and VBIOS RIMs from NVIDIA's RIM service and OCSP answers for its device and RIM chains; "
        "--gpu-rim ID adds RIMs by id. Responses are cached; HTTP 429 is retried after Retry-After.",
    )
    fetch.add_argument("--snp", action="append", default=[], metavar="PRODUCT:CHIP_ID:TCB")
    fetch.add_argument("--vlek", action="append", default=[], metavar="PRODUCT")
    fetch.add_argument("--fmspc", action="append", default=[], metavar="HEX")
    fetch.add_argument("--gpu", action="append", default=[], type=Path, metavar="EVIDENCE.json")
    fetch.add_argument("--gpu-rim", action="append", default=[], metavar="RIM_ID")
    fetch.add_argument("--key", type=Path, required=True, help="bundle signing key (sovereign bundle keygen)")
    fetch.add_argument("--out", type=Path, required=True, help="bundle file to write")
    fetch.add_argument("--cache", type=Path, default=Path("var/collateral-cache"))
    fetch.add_argument("--amd-base", default=None, help=argparse.SUPPRESS)
    fetch.add_argument("--intel-base", default=None, help=argparse.SUPPRESS)
    fetch.add_argument("--rim-base", default=None, help=argparse.SUPPRESS)
    fetch.add_argument("--ocsp-base", default=None, help=argparse.SUPPRESS)
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(func=runs("sovereign.cli.collateral:_fetch"))

    bundle = cmds.add_parser("bundle", help="create or verify a signed collateral bundle from files")
    bcmds = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    create = bcmds.add_parser("create", help="sign collateral files into one bundle")
    create.add_argument("files", nargs="+", type=Path, metavar="FILE")
    create.add_argument("--key", type=Path, required=True)
    create.add_argument("--out", type=Path, required=True)
    create.set_defaults(func=runs("sovereign.cli.collateral:_bundle_create"))
    verify = bcmds.add_parser("verify", help="check a bundle's signature and objects; show its contents")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--signer-key", type=Path, action="append", required=True)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=runs("sovereign.cli.collateral:_bundle_verify"))


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="store folder (default $SOVEREIGN_COLLATERAL, the installed config's collateral, or var/collateral)",
    )
