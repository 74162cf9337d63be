"""``sovereign bundle keygen|build|verify|install|rollback``: the offline (air-gapped) install bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sovereign.bundle import installer as inst
from sovereign.bundle.installer import BundleError
from sovereign.cli._output import fail, print_json, print_ok


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bundle", help="build, verify and install the offline (air-gapped) bundle")
    cmds = parser.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    key = cmds.add_parser("keygen", help="make an Ed25519 release key pair (NAME.key, NAME.pub.pem)")
    key.add_argument("--out", type=Path, required=True, help="folder for the key files")
    key.add_argument(
        "--name", default="release", help="file-name stem of the pair (letters, digits, '-', '_', '.')"
    )
    key.add_argument("--json", action="store_true", help="machine-readable output")
    key.set_defaults(func=_keygen)

    build = cmds.add_parser(
        "build",
        help="build the signed offline bundle (connected machine; needs the package index)",
        description="Wheelhouse for the target (every runtime dependency, hash-checked against "
        "requirements.lock, plus the project's own reproducible wheel), the lock, deploy/, docs, an "
        "optional signed collateral bundle and install.sh, listed in a manifest signed with the release key.",
    )
    build.add_argument(
        "--key", type=Path, required=True, help="release signing key (sovereign bundle keygen)"
    )
    build.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    build.add_argument("--repo", type=Path, default=Path("."), help="project checkout (default: .)")
    build.add_argument("--collateral", type=Path, help="signed collateral bundle to ship")
    build.add_argument(
        "--worktree", action="store_true", help="build the working tree, not HEAD (marked dirty)"
    )
    build.add_argument("--python-version", default="3.11")
    build.add_argument("--machine", default="x86_64")
    build.add_argument("--glibc", default="2.34", help="target glibc (manylinux tags up to it)")
    build.add_argument("--cache", type=Path, default=Path("var/bundle-cache"), help="download cache")
    build.add_argument("--json", action="store_true")
    build.set_defaults(func=_build)

    for name, text in (
        ("verify", "check a bundle's signature and every file hash"),
        ("install", "verify, then install"),
    ):
        p = cmds.add_parser(
            name,
            help=text,
            description="A .tar.gz is first checked against the signed SHA256SUMS published beside it "
            "(NAME.SHA256SUMS and NAME.SHA256SUMS.sig) and only then extracted; then the signed manifest "
            "and every file in it are checked.",
        )
        p.add_argument("bundle", type=Path, help="bundle .tar.gz (with its SHA256SUMS beside it) or folder")
        p.add_argument("--public-key", type=Path, required=True, help="release public key the site pins")
        if name == "install":
            inst.add_layout_options(p)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_verify if name == "verify" else _install)

    back = cmds.add_parser(
        "rollback",
        help="switch PREFIX/current back to the release installed before it",
        description="Only the 'current' and 'previous' links under PREFIX change (atomically); config, data "
        "and the database stay as they are. Restart the services afterwards. Running it again goes "
        "forward to the release just left.",
    )
    back.add_argument("--prefix", type=Path, default=Path("/opt/sovereign"), help="install prefix")
    back.add_argument("--json", action="store_true")
    back.set_defaults(func=_rollback)


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
        "  sites compare it, out of band, with: openssl pkey -pubin -in NAME.pub.pem -outform DER | sha256sum"
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
