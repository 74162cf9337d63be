"""``sovereign bundle``: the arguments; the implementation is ``sovereign.cli.bundle``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sovereign.bundle import installer as inst
from sovereign.cli._lazy import runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bundle", help="build, verify and install the offline (air-gapped) bundle")
    cmds = parser.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    key = cmds.add_parser("keygen", help="make an Ed25519 release key pair (NAME.key, NAME.pub.pem)")
    key.add_argument("--out", type=Path, required=True, help="folder for the key files")
    key.add_argument(
        "--name", default="release", help="file-name stem of the pair (letters, digits, '-', '_', '.')"
    )
    key.add_argument("--json", action="store_true", help="machine-readable output")
    key.set_defaults(func=runs("sovereign.cli.bundle:_keygen"))

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
    build.set_defaults(func=runs("sovereign.cli.bundle:_build"))

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
        p.set_defaults(func=runs("sovereign.cli.bundle:" + ("_verify" if name == "verify" else "_install")))

    back = cmds.add_parser(
        "rollback",
        help="switch PREFIX/current back to the release installed before it",
        description="Only the 'current' and 'previous' links under PREFIX change (atomically); config, data "
        "and the database stay as they are. Restart the services afterwards. Running it again goes "
        "forward to the release just left.",
    )
    back.add_argument("--prefix", type=Path, default=Path("/opt/sovereign"), help="install prefix")
    back.add_argument("--json", action="store_true")
    back.set_defaults(func=runs("sovereign.cli.bundle:_rollback"))
