"""``sovereign bundle keygen|build|verify|install|rollback``: the offline (air-gapped) install bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sovereign.bundle import installer as inst
from sovereign.bundle.installer import BundleError
from sovereign.cli._output import fail, print_json, print_ok


def _keygen(args: argparse.Namespace) -> int:
    from sovereign.bundle import keys

    try:
        pair = keys.generate_pair(args.out, args.name)
    except BundleError as err:
        return fail(err, as_json=args.json)
    if args.json:
        out = {"private_key": str(pair.private_key), "public_key": str(pair.public_key)}
        print_ok({**out, "fingerprint": pair.fingerprint})
        return 0
    print(f"private key: {pair.private_key} (0600; keep it offline)")
    print(f"public key:  {pair.public_key} (give it to every site)")
    print(f"fingerprint: {pair.fingerprint}")
    print(
        "  sites compare it, out of band, with: "
        f"openssl pkey -pubin -in {pair.public_key.name} -outform DER | sha256sum"
    )
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _build(args: argparse.Namespace) -> int:
    from sovereign.bundle import keys
    from sovereign.bundle.build import BuildOptions, Target, build

    try:
        result = build(
            BuildOptions(
                repo=args.repo.resolve(),
                out_dir=args.out,
                signing_key=keys.load_signing_key(args.key),
                cache=args.cache,
                target=Target(args.python_version, args.machine, args.glibc),
                collateral=args.collateral,
                from_worktree=args.worktree,
                progress=_stderr,
            )
        )
    except BundleError as err:
        return fail(err, as_json=args.json)
    for warning in result.warnings:
        _stderr(f"warning: {warning}")
    info = {"archive": str(result.archive), "manifest_sha256": result.manifest_sha256,
            "release_id": result.manifest["release_id"], "commit": result.manifest["commit"],
            "dirty": result.manifest["dirty"], "publish": [str(p) for p in result.published],
            "warnings": list(result.warnings)}  # fmt: skip
    if args.json:
        print_json({"ok": True, **info})
    else:
        print(f"wrote {result.archive}\nrelease {info['release_id']} (commit {info['commit']}"
              f"{', DIRTY working tree' if info['dirty'] else ''})\nmanifest sha256 {result.manifest_sha256}")  # fmt: skip
        print("publish together (sites check SHA256SUMS with openssl and sha256sum before extracting):")
        for path in result.published:
            print(f"  {path}")
    return 0


def _with_folder(args: argparse.Namespace, action: str) -> int:
    from sovereign.bundle import keys

    layout = inst.layout_from(args) if action == "install" else None
    try:
        # A tarball is checked against its signed SHA256SUMS before anything in it is extracted.
        manifest, release, created = inst.verify_or_install(
            args.bundle, args.public_key, layout, keys.verify_with_nacl
        )
    except BundleError as err:
        return fail(err, as_json=args.json)
    if layout is None:
        out = {"release_id": manifest.release_id, "files": len(manifest.files)}
        if args.json:
            print_json({"ok": True, **out})
        else:
            print(f"bundle OK: release {manifest.release_id}, {len(manifest.files)} files verified")
    elif args.json:
        print_json({"ok": True, "release": str(release), "created": created})
    else:
        print(inst.next_steps(layout, manifest))
    return 0


def _verify(args: argparse.Namespace) -> int:
    return _with_folder(args, "verify")


def _install(args: argparse.Namespace) -> int:
    return _with_folder(args, "install")


def _rollback(args: argparse.Namespace) -> int:
    try:
        left, now = inst.rollback(Path(args.prefix).absolute())
    except BundleError as err:
        return fail(err, as_json=args.json)
    if args.json:
        print_json({"ok": True, "from": str(left), "to": str(now)})
    else:
        print(f"current release: {now.name} (was {left.name}); config and data unchanged")
        print("restart the services to run it: systemctl restart openbao sovereign-control-plane")
    return 0
