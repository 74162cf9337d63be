"""``sovereign collateral fetch|import|list|status|bundle``: the offline collateral store and the signed
bundles that carry collateral from the connected side to air-gapped sites."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from attestation import collateral_bundle
from attestation.coded import CodedError
from attestation.collateral import classify
from attestation.errors import AttestationError, Code, CollateralError
from attestation.store import CollateralStore
from sovereign.cli._common import default_collateral_store, load_trust
from sovereign.cli._installed import refuse_root_on_service_files
from sovereign.cli._output import UsageError, fail, print_json, print_ok, print_table


def _signers(paths: list[Path]) -> list[Ed25519PublicKey]:
    return [collateral_bundle.public_key_from_pem(_read(p)) for p in paths]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CollateralError(f"cannot read {path}: {exc.strerror}") from None


def _import(args: argparse.Namespace) -> int:
    root = args.store or default_collateral_store()
    try:
        refuse_root_on_service_files(root, "the collateral store", Code.COLLATERAL_STORE_ERROR.value)
    except CodedError as err:
        return fail(err, as_json=args.json)
    store = CollateralStore(root)
    try:
        trust, now = load_trust(args.trust), datetime.now(UTC)
        if args.bundle is not None:
            data = _read(args.bundle)
            report = store.import_bundle(data, signers=_signers(args.signer_key), trust=trust, now=now)
        elif args.files:
            report = store.import_files(args.files, trust=trust, now=now)
        else:
            raise UsageError("give --bundle FILE or collateral FILEs")
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
