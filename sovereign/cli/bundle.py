"""``sovereign bundle keygen|build|verify|install``: the offline (air-gapped) install bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.bundle import installer as inst
from sovereign.bundle.installer import BundleError
from sovereign.cli._output import fail, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bundle", help="build, verify and install the offline (air-gapped) bundle")
    cmds = parser.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    key = cmds.add_parser("keygen", help="make an Ed25519 release key pair (NAME.key, NAME.pub.pem)")
    key.add_argument("--out", type=Path, required=True, help="folder for the key files")
    key.add_argument("--name", default="release")
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
            p.add_argument("--prefix", type=Path, default=Path("/opt/sovereign"))
            p.add_argument("--config-dir", type=Path, default=Path("/etc/sovereign"))
            p.add_argument("--data-dir", type=Path, default=Path("/var/lib/sovereign"))
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_verify if name == "verify" else _install)


def _keygen(args: argparse.Namespace) -> int:
    from sovereign.bundle import keys

    try:
        key_path, pub_path = keys.generate(args.out, args.name)
    except BundleError as err:
        return fail(err, as_json=False)
    print(f"private key: {key_path} (0600; keep it offline)\npublic key:  {pub_path} (give it to every site)")
    return 0


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
            )
        )
    except BundleError as err:
        return fail(err, as_json=args.json)
    info = {"archive": str(result.archive), "manifest_sha256": result.manifest_sha256,
            "release_id": result.manifest["release_id"], "commit": result.manifest["commit"],
            "dirty": result.manifest["dirty"], "publish": [str(p) for p in result.published]}  # fmt: skip
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

    layout = None
    if action == "install":
        layout = inst.Layout(args.prefix.resolve(), args.config_dir.resolve(), args.data_dir.resolve())
    try:
        # A tarball is checked against its signed SHA256SUMS before anything in it is extracted.
        manifest, release, created = inst.verify_or_install(
            args.bundle, args.public_key, layout, keys.verify_with_nacl
        )
    except BundleError as err:
        return fail(err, as_json=args.json)
    if layout is None:
        out = {"release_id": manifest.release_id, "files": len(manifest.files)}
        print_json({"ok": True, **out}) if args.json else print(
            f"bundle OK: release {manifest.release_id}, {len(manifest.files)} files, signature and hashes checked"
        )
    elif args.json:
        print_json({"ok": True, "release": str(release), "created": created})
    else:
        print(inst.next_steps(layout, manifest))
    return 0


def _verify(args: argparse.Namespace) -> int:
    return _with_folder(args, "verify")


def _install(args: argparse.Namespace) -> int:
    return _with_folder(args, "install")
