"""``sovereign collateral fetch|import|list|status|bundle``: the offline collateral store and the signed
bundles that carry collateral from the connected side to air-gapped sites."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from attestation import collateral_bundle
from attestation.collateral import classify
from attestation.errors import AttestationError, Code, CollateralError
from attestation.store import CollateralStore
from sovereign.cli._common import add_trust_argument, default_collateral_store, load_trust, parse_time
from sovereign.cli._output import fail, print_json, print_ok, print_table


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
    imp.set_defaults(func=_import)

    ls = cmds.add_parser("list", help="list what the store holds")
    _store_argument(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    st = cmds.add_parser("status", help="what expires when, and the earliest nextUpdate")
    _store_argument(st)
    st.add_argument(
        "--at", type=parse_time, default="now", help="evaluate at this ISO 8601 time (default: now)"
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

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
    fetch.set_defaults(func=_fetch)

    bundle = cmds.add_parser("bundle", help="create or verify a signed collateral bundle from files")
    bcmds = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    create = bcmds.add_parser("create", help="sign collateral files into one bundle")
    create.add_argument("files", nargs="+", type=Path, metavar="FILE")
    create.add_argument("--key", type=Path, required=True)
    create.add_argument("--out", type=Path, required=True)
    create.set_defaults(func=_bundle_create)
    verify = bcmds.add_parser("verify", help="check a bundle's signature and objects; show its contents")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--signer-key", type=Path, action="append", required=True)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_bundle_verify)


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="store folder (default $SOVEREIGN_COLLATERAL, the installed config's collateral, or var/collateral)",
    )


def _signers(paths: list[Path]) -> list[Ed25519PublicKey]:
    return [collateral_bundle.public_key_from_pem(_read(p)) for p in paths]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CollateralError(f"cannot read {path}: {exc.strerror}") from None


def _import(args: argparse.Namespace) -> int:
    store = CollateralStore(args.store or default_collateral_store())
    try:
        trust, now = load_trust(args.trust), datetime.now(UTC)
        if args.bundle is not None:
            data = _read(args.bundle)
            report = store.import_bundle(data, signers=_signers(args.signer_key), trust=trust, now=now)
        elif args.files:
            report = store.import_files(args.files, trust=trust, now=now)
        else:
            print("error: give --bundle FILE or collateral FILEs", file=sys.stderr)
            return 2
    except AttestationError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json({"ok": True, **report.to_dict()})
        return 0
    for row in report.added:
        print(f"added      {row['kind']:<22} {row['description']}  ({row['sha256'][:16]})")
    for row in report.unchanged:
        print(f"unchanged  {row['kind']:<22} {row['description']}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"{len(report.added)} added, {len(report.unchanged)} already present in {store.root}")
    if report.earliest_next_update:
        print(f"earliest nextUpdate in the bundle: {report.earliest_next_update}")
    return 0


def _existing_store(args: argparse.Namespace) -> CollateralStore:
    """The store a read-only command looks at: it must exist (reading never makes one)."""
    root = args.store or default_collateral_store()
    if not root.is_dir():
        raise CollateralError(
            f"no collateral store at {root}",
            code=Code.COLLATERAL_STORE_ERROR,
            hint="give the store with --store or $SOVEREIGN_COLLATERAL (installed hosts: collateral in the "
            "installed config); 'sovereign collateral import' makes one",
        )
    return CollateralStore(root)


def _list(args: argparse.Namespace) -> int:
    try:
        store = _existing_store(args)
        rows = store.entries()
    except AttestationError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_ok(items=rows)
    else:
        print_table(rows, ["kind", "description", "source", "imported_at", "sha256"])
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        store = _existing_store(args)
        rows, earliest = store.status(args.at)
    except AttestationError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_ok(earliest_next_update=earliest.isoformat() if earliest else None, items=rows)
        return 0
    print_table(rows, ["valid_from", "expires", "state", "kind", "description", "source"])
    print(
        f"earliest nextUpdate: {earliest.isoformat() if earliest else 'none (no CRL, TCB info, QE identity, RIM or OCSP)'}"
    )
    return 0


def _signing_key(path: Path) -> Ed25519PrivateKey:
    return collateral_bundle.signing_key_from_seed_hex(_read(path).decode("ascii", "replace"))


def _fetch(args: argparse.Namespace) -> int:
    from kms.collateral_fetch import Fetcher, FetchPlan, UrllibClient, parse_snp_target
    from kms.collateral_fetch.gpu import GpuFetcher, GpuPlan, read_evidence

    try:
        plan = FetchPlan(
            snp=[parse_snp_target(t) for t in args.snp], vlek=list(args.vlek), fmspcs=list(args.fmspc)
        )
        gpu_plan = GpuPlan(
            evidence=[e for path in args.gpu for e in read_evidence(_read(path), str(path))],
            rim_ids=list(args.gpu_rim),
        )
        fetcher = Fetcher(
            UrllibClient(), cache=args.cache, amd_base=args.amd_base, intel_base=args.intel_base
        )
        items = fetcher.fetch(plan)
        if gpu_plan:
            items += GpuFetcher(fetcher, rim_base=args.rim_base, ocsp_base=args.ocsp_base).fetch(gpu_plan)
        data = collateral_bundle.create(items, _signing_key(args.key), datetime.now(UTC))
        args.out.write_bytes(data)
        opened = collateral_bundle.open_bundle(data, [_signing_key(args.key).public_key()])
    except AttestationError as err:
        return fail(err, as_json=args.json)
    out = {
        "bundle": str(args.out),
        "items": len(opened.items),
        "earliest_next_update": opened.earliest_next_update,
    }
    print_json({"ok": True, **out}) if args.json else print(
        f"wrote {args.out}: {out['items']} items; earliest nextUpdate {out['earliest_next_update']}"
    )
    return 0


def _bundle_create(args: argparse.Namespace) -> int:
    try:
        items = [(item, path.name) for path in args.files for item in classify(_read(path), str(path))]
        data = collateral_bundle.create(items, _signing_key(args.key), datetime.now(UTC))
    except AttestationError as err:
        return fail(err, as_json=False)
    args.out.write_bytes(data)
    print(f"wrote {args.out}: {len(items)} items")
    return 0


def _bundle_verify(args: argparse.Namespace) -> int:
    try:
        opened = collateral_bundle.open_bundle(_read(args.bundle), _signers(args.signer_key))
    except AttestationError as err:
        return fail(err, as_json=args.json)
    rows = opened.manifest["items"]
    if args.json:
        print_json({"ok": True, "manifest": opened.manifest})
    else:
        print_table(rows, ["next_update", "kind", "description", "source"])
        print(f"signature OK; earliest nextUpdate: {opened.earliest_next_update}")
    return 0
