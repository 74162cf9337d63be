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
3. the service users exist (``useradd --system``, only if missing); a fresh virtual environment gets the
   wheels with ``pip --no-index --require-hashes``; the systemd units are rendered for the chosen
   folders and users into the release; config is laid out only where absent (never overwritten),
   readable by the service's group only; ``current`` is switched atomically to the new release and
   ``previous`` to the one it replaced, so re-running upgrades in place, keeps config and data, and
   ``sovereign bundle rollback`` can switch back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

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
UNIT_TEMPLATES = "deploy/systemd"
OPENBAO_SAMPLE = "deploy/openbao/openbao.hcl"
UNITS = "systemd"  # in each release: the units rendered for the folders and users of that install
CREDENTIALS = "openbao"  # CONFIG_DIR/openbao: the AppRole files `sovereign kms bootstrap --out` writes
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
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
    BUNDLE_NO_PREVIOUS_RELEASE = "BUNDLE_NO_PREVIOUS_RELEASE"
    BUNDLE_LAYOUT_INVALID = "BUNDLE_LAYOUT_INVALID"


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


_PEM_HINT = (
    "give --public-key the NAME.pub.pem that 'sovereign bundle keygen' wrote (an Ed25519 PUBLIC KEY PEM)"
)


def key_fingerprint(raw: bytes) -> str:
    """``sha256:`` + the SHA-256 of the key's SubjectPublicKeyInfo DER: what
    ``openssl pkey -pubin -in KEY.pub.pem -outform DER | sha256sum`` prints, to compare out of band."""
    return "sha256:" + hashlib.sha256(ED25519_SPKI_PREFIX + raw).hexdigest()


def raw_public_key(pem: bytes) -> bytes:
    """The 32-byte Ed25519 key of a ``PUBLIC KEY`` PEM (SubjectPublicKeyInfo)."""
    import base64
    import binascii

    lines = [ln.strip() for ln in pem.decode("ascii", "replace").splitlines() if ln.strip()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise BundleError("not a PUBLIC KEY PEM file", code=BundleCode.BUNDLE_KEY_INVALID, hint=_PEM_HINT)
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error:
        raise BundleError(
            "PUBLIC KEY PEM is not base64", code=BundleCode.BUNDLE_KEY_INVALID, hint=_PEM_HINT
        ) from None
    if len(der) != 44 or not der.startswith(ED25519_SPKI_PREFIX):
        raise BundleError(
            "the public key is not an Ed25519 key", code=BundleCode.BUNDLE_KEY_INVALID, hint=_PEM_HINT
        )
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
    returns its one top folder. A Python without the filter (before 3.11.4: Debian 12's 3.11.2) gets
    only what a bundle holds, plain files and folders under relative names, anything else refused."""
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            if len(tops) != 1:
                raise _manifest(f"{archive} must hold exactly one top folder")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                _extract_plain(tar, members, dest, archive)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(
            f"cannot extract {archive}: {exc}",
            code=BundleCode.BUNDLE_MANIFEST_INVALID,
            hint="get the bundle again",
        ) from None
    return dest / tops.pop()


def _extract_plain(tar: Any, members: list[Any], dest: Path, archive: Path) -> None:
    for member in members:
        if not _safe_relative(member.name) or not (member.isfile() or member.isdir()):
            raise _manifest(f"{archive}: {member.name!r} is not a plain file or folder under a relative name")
    for member in members:
        target = dest / member.name
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has content
        with source, target.open("xb") as out:
            shutil.copyfileobj(source, out)
        target.chmod(member.mode & 0o755)  # keeps install.sh executable; no set-id or group/other write


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
    """Where an install goes and who runs it. The shipped units, config samples and OpenBao HCL name
    the default of each folder and user; :func:`render` puts the chosen ones in their place."""

    prefix: Path  # releases/<id>/venv, current -> releases/<id>, previous -> the one before
    config_dir: Path
    data_dir: Path
    openbao_config_dir: Path = Path("/etc/openbao")
    openbao_data_dir: Path = Path("/var/lib/openbao")
    openbao_log_dir: Path = Path("/var/log/openbao")
    user: str = "sovereign"
    openbao_user: str = "openbao"
    manage_users: bool = True  # create the users and set ownership (needs root)

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def previous(self) -> Path:
        return self.prefix / "previous"

    def folders(self) -> dict[str, Path]:
        """Each shipped default folder and the folder chosen for it."""
        return {
            "/opt/sovereign": self.prefix,
            "/etc/sovereign": self.config_dir,
            "/var/lib/sovereign": self.data_dir,
            "/etc/openbao": self.openbao_config_dir,
            "/var/lib/openbao": self.openbao_data_dir,
            "/var/log/openbao": self.openbao_log_dir,
        }

    def check(self) -> None:
        for name in (self.user, self.openbao_user):
            if not USER_NAME.fullmatch(name):
                raise BundleError(
                    f"{name!r} is not a valid system user name",
                    code=BundleCode.BUNDLE_LAYOUT_INVALID,
                    hint="lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32",
                )
        for default, chosen in self.folders().items():
            if not chosen.is_absolute() or any(c in str(chosen) for c in "\n\"'$%` "):
                raise BundleError(
                    f"the folder for {default} ({chosen}) must be an absolute path without spaces, "
                    "quotes, '$', '%' or '`'",
                    code=BundleCode.BUNDLE_LAYOUT_INVALID,
                    hint="systemd units and TOML name it verbatim; choose a plain absolute path",
                )


def render(text: str, layout: Layout) -> str:
    """A shipped unit, config sample or HCL for ``layout``: each default folder (as a whole path
    component), ``@CONFIG_DIR@`` / ``@DATA_DIR@``, and the ``User=``/``Group=`` lines of the two
    service users. One pass, so a chosen folder is never substituted again."""
    folders = {**layout.folders(), "@CONFIG_DIR@": layout.config_dir, "@DATA_DIR@": layout.data_dir}
    pattern = "|".join(re.escape(k) for k in sorted(folders, key=len, reverse=True))
    text = re.sub(rf"(?<![\w.@/-])(?:{pattern})(?![\w.@-])", lambda m: str(folders[m.group(0)]), text)
    users = {"sovereign": layout.user, "openbao": layout.openbao_user}
    return re.sub(
        r"^(User|Group)=(sovereign|openbao)[ \t]*$",
        lambda m: f"{m.group(1)}={users[m.group(2)]}",
        text,
        flags=re.M,
    )


# --- service users and ownership -------------------------------------------------------------------


def _nologin() -> str:
    return next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false")


def ensure_users(layout: Layout) -> list[str]:
    """The two service users (system accounts, own group, no login, no home created); returns the names
    created. Needs root; without ``manage_users`` nothing is checked or created."""
    if not layout.manage_users:
        return []
    if os.geteuid() != 0:
        raise BundleError(
            "creating the service users and setting ownership needs root",
            code=BundleCode.BUNDLE_INSTALL_FAILED,
            hint="run the installer with sudo (nothing was written), or pass --no-service-users to "
            "install without users and ownership (development only)",
        )
    created = []
    for name, home in ((layout.user, layout.data_dir), (layout.openbao_user, layout.openbao_data_dir)):
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        _run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
             "--shell", _nologin(), "--comment", f"sovereign service ({name})", name],
            f"creating the service user {name} (useradd)",
        )  # fmt: skip
        created.append(name)
    return created


def _owner(layout: Layout, user: str | None, group: str | None) -> tuple[int, int] | None:
    if not layout.manage_users:
        return None
    uid = pwd.getpwnam(user).pw_uid if user else 0
    gid = pwd.getpwnam(group).pw_gid if group else 0
    return uid, gid


def _own(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)
    os.chmod(path, mode)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise BundleError(
            f"{what} failed: cannot run {cmd[0]}: {exc.strerror or type(exc).__name__}",
            code=BundleCode.BUNDLE_INSTALL_FAILED,
            hint="nothing was switched over; install the missing tool and run the installer again",
        ) from None
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
        render_units(root / UNIT_TEMPLATES, release / UNITS, layout)
    except BaseException:
        shutil.rmtree(release, ignore_errors=True)
        raise
    old = _release_of(layout.current)
    _switch(layout.current, release)
    if old is not None and old != release.resolve():
        _switch(layout.previous, old)
    return release


def render_units(templates: Path, dest: Path, layout: Layout) -> list[Path]:
    """The shipped systemd units rendered for ``layout`` (root-owned, world-readable: no secrets)."""
    dest.mkdir(mode=0o755)
    out = []
    for unit in sorted(templates.glob("*.service")) if templates.is_dir() else []:
        target = dest / unit.name
        target.write_text(render(unit.read_text(), layout))
        os.chmod(target, 0o644)
        out.append(target)
    return out


def _release_of(link: Path) -> Path | None:
    """The release folder ``link`` points at, if it is one."""
    if not link.is_symlink():
        return None
    target = link.resolve()
    return target if (target / "venv").is_dir() else None


def _switch(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)  # atomic: the service sees the old or the new release, never neither


def rollback(prefix: Path) -> tuple[Path, Path]:
    """Switch ``current`` back to ``previous`` (and ``previous`` to what was current, so a second
    rollback goes forward again). Only the two links change: config and data stay as they are.
    Returns (the release left, the release now current)."""
    current_link, previous_link = prefix / "current", prefix / "previous"
    current, previous = _release_of(current_link), _release_of(previous_link)
    if current is None:
        raise BundleError(
            f"{current_link} is not a link to an installed release",
            code=BundleCode.BUNDLE_NO_PREVIOUS_RELEASE,
            hint="give --prefix the folder the bundle was installed into",
        )
    if previous is None or previous == current:
        raise BundleError(
            f"no previous release to go back to under {prefix} (the first install has none)",
            code=BundleCode.BUNDLE_NO_PREVIOUS_RELEASE,
            hint=f"the installed releases are in {prefix / 'releases'}; install the one you want again",
        )
    _switch(current_link, previous)
    _switch(previous_link, current)
    return current, previous


def lay_out_config(root: Path, layout: Layout) -> list[str]:
    """Step 3b: folders with their owners, and config samples rendered where absent (never over an
    operator's file). The service reads its config through its group and cannot change it (root:USER
    0750/0640); what it writes (data, the AppRole credentials ``kms bootstrap`` leaves) it owns, 0700.
    OpenBao's folders are its own user's; its HCL is root:openbao 0640."""
    root_svc = _owner(layout, None, layout.user)
    svc = _owner(layout, layout.user, layout.user)
    root_bao = _owner(layout, None, layout.openbao_user)
    bao = _owner(layout, layout.openbao_user, layout.openbao_user)
    folders = [
        (layout.config_dir, 0o750, root_svc),
        (layout.config_dir / CREDENTIALS, 0o700, svc),
        (layout.config_dir / "tls", 0o750, root_svc),  # sovereign.toml's TLS files and OpenBao's CA
        (layout.data_dir, 0o700, svc),
        (layout.data_dir / "collateral", 0o700, svc),
        (layout.openbao_config_dir, 0o750, root_bao),
        (layout.openbao_config_dir / "tls", 0o750, root_bao),
        (layout.openbao_data_dir, 0o700, bao),
        (layout.openbao_data_dir / "raft", 0o700, bao),  # the shipped HCL's raft storage path
        (layout.openbao_log_dir, 0o700, bao),
    ]
    created: list[str] = []
    for directory, mode, owner in folders:
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
            created.append(str(directory))
        _own(directory, mode, owner)
    samples = root / CONFIG_SAMPLES
    files = [
        (p, layout.config_dir / p.relative_to(samples), root_svc) for p in samples.rglob("*") if p.is_file()
    ]
    if (root / OPENBAO_SAMPLE).is_file():
        files.append((root / OPENBAO_SAMPLE, layout.openbao_config_dir / "openbao.hcl", root_bao))
    for sample, dest, owner in sorted(files):
        if dest.exists():
            continue  # operator's config: never overwritten; the new sample stays under share/
        if not dest.parent.exists():
            dest.parent.mkdir(parents=True, mode=0o750)
            _own(dest.parent, 0o750, owner)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render(sample.read_text(), layout))
        _own(dest, 0o640 if owner is not None else 0o600, owner)
        created.append(str(dest))
    return created


def next_steps(layout: Layout, manifest: Manifest) -> str:
    bin_dir = layout.current / "venv" / "bin"
    share = layout.current / "share"
    units = layout.current / UNITS
    as_user = f"runuser -u {layout.user} --"
    steps = [
        f"OpenBao: put its TLS certificate and key in {layout.openbao_config_dir}/tls/, fill the <...> "
        f"values in {layout.openbao_config_dir}/openbao.hcl, start it (unit below), then initialise and "
        f"unseal it: {share}/deploy/openbao/README.md",
        f"Copy OpenBao's CA to {layout.config_dir}/tls/openbao-ca.pem (root:{layout.user} 0640), then "
        f"bootstrap OpenBao as the service user (it writes the AppRole files there; the root token is "
        f"read from standard input): {as_user} {bin_dir}/sovereign kms bootstrap --addr "
        f"https://127.0.0.1:8200 --ca-cert {layout.config_dir}/tls/openbao-ca.pem --token-file - "
        f"--out {layout.config_dir}/{CREDENTIALS} < ROOT_TOKEN_FILE",
        f"Put the control plane's TLS files in {layout.config_dir}/tls/ (root:{layout.user} 0640) and "
        f"review {layout.config_dir}/sovereign.toml (OIDC issuer, TLS files, OpenBao role id, policy).",
    ]
    steps += [
        f"Import collateral: {as_user} {bin_dir}/sovereign collateral import --bundle {share}/{path} "
        f"--signer-key COLLATERAL_SIGNER.pub.pem --store {layout.data_dir}/collateral"
        for path in sorted(manifest.files)
        if path.startswith("collateral/")
    ]
    steps.append(
        f"Install the units rendered for these folders and users: cp {units}/*.service "
        "/etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now openbao "
        "sovereign-control-plane (sovereign-node on training nodes)."
    )
    head = [
        f"sovereign {manifest.version} (release {manifest.release_id}) installed in {layout.prefix}",
        f"  config: {layout.config_dir} (existing files kept)   data: {layout.data_dir}",
        f"  OpenBao: {layout.openbao_config_dir}, {layout.openbao_data_dir}, {layout.openbao_log_dir}",
        f"  services run as {layout.user} and {layout.openbao_user}; "
        f"'sovereign bundle rollback --prefix {layout.prefix}' returns to the previous release",
        "Next steps:",
    ]
    return "\n".join(head + [f"  {n}. {step}" for n, step in enumerate(steps, 1)])


def check_python_shared(executable: str = sys.executable, base_prefix: str = sys.base_prefix) -> None:
    """The release's virtual environment runs this Python (its ``bin/python`` links to it), as the service
    users: every folder on the way to the interpreter and its standard library must be searchable by
    others. A Python under /root (pyenv, a user's build) installs fine and then fails to start every
    service with "Permission denied"; refuse it before writing anything."""
    for target in (Path(os.path.realpath(executable)), Path(os.path.realpath(base_prefix)) / "lib"):
        for folder in reversed(target.parents):
            if not folder.stat().st_mode & stat.S_IXOTH:
                raise BundleError(
                    f"the Python running the installer ({executable}) is not usable by the service users: "
                    f"{folder} is not searchable by others",
                    code=BundleCode.BUNDLE_LAYOUT_INVALID,
                    hint="run the installer with a system-wide Python 3.11: "
                    "SOVEREIGN_PYTHON=/usr/bin/python3.11 ./install.sh ...",
                )


def install(
    root: Path, public_key: Path, layout: Layout, *, verifier: Verifier = verify_with_openssl
) -> tuple[Manifest, Path, list[str]]:
    manifest = verify_bundle(root, public_key, verifier)
    check_platform(manifest)
    layout.check()
    if layout.manage_users:
        check_python_shared()
    users = ensure_users(layout)
    old_umask = os.umask(
        0o022
    )  # the release is code every service user runs: readable, whatever root's umask
    try:
        release = install_release(root, manifest, layout)
    finally:
        os.umask(old_umask)
    created = [f"user {name}" for name in users] + lay_out_config(root, layout)
    return manifest, release, created


def verify_or_install(
    bundle: Path, public_key: Path, layout: Layout | None, verifier: Verifier = verify_with_openssl
) -> tuple[Manifest, Path | None, list[str]]:
    """Check (``layout`` None) or install ``bundle``: an extracted folder, or a tarball that is verified
    against its signed SHA256SUMS before anything is extracted. Returns the manifest, the release folder
    and the config paths created (None and [] when only checking)."""
    if not bundle.exists():
        raise BundleError(
            f"there is no bundle at {bundle}",
            code=BundleCode.BUNDLE_FILE_MISSING,
            hint="give the extracted bundle folder or the .tar.gz (with its SHA256SUMS files beside it)",
        )
    if not bundle.is_file():
        if layout is None:
            return verify_bundle(bundle, public_key, verifier), None, []
        return install(bundle, public_key, layout, verifier=verifier)
    verify_archive(bundle, public_key, verifier)
    with tempfile.TemporaryDirectory(prefix="sovereign-bundle-") as tmp:
        return verify_or_install(extract_archive(bundle, Path(tmp)), public_key, layout, verifier)


def add_layout_options(parser: argparse.ArgumentParser) -> None:
    """The install folders and users, shared by install.py and ``sovereign bundle install``."""
    parser.add_argument("--prefix", type=Path, default=Path("/opt/sovereign"))
    parser.add_argument("--config-dir", type=Path, default=Path("/etc/sovereign"))
    parser.add_argument("--data-dir", type=Path, default=Path("/var/lib/sovereign"))
    parser.add_argument("--openbao-config-dir", type=Path, default=Path("/etc/openbao"))
    parser.add_argument("--openbao-data-dir", type=Path, default=Path("/var/lib/openbao"))
    parser.add_argument("--openbao-log-dir", type=Path, default=Path("/var/log/openbao"))
    parser.add_argument("--user", default="sovereign", help="control-plane service user (created if missing)")
    parser.add_argument("--openbao-user", default="openbao", help="OpenBao service user (created if missing)")
    parser.add_argument(
        "--no-service-users",
        action="store_true",
        help="create no users and change no ownership (development installs without root)",
    )


def layout_from(args: argparse.Namespace) -> Layout:
    return Layout(
        prefix=Path(os.path.abspath(args.prefix)),
        config_dir=Path(os.path.abspath(args.config_dir)),
        data_dir=Path(os.path.abspath(args.data_dir)),
        openbao_config_dir=Path(os.path.abspath(args.openbao_config_dir)),
        openbao_data_dir=Path(os.path.abspath(args.openbao_data_dir)),
        openbao_log_dir=Path(os.path.abspath(args.openbao_log_dir)),
        user=args.user,
        openbao_user=args.openbao_user,
        manage_users=not args.no_service_users,
    )


def report(err: BundleError) -> int:
    print(f"error: {err.code}: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint}", file=sys.stderr)
    return 1


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
    add_layout_options(parser)
    parser.add_argument("--verify-only", action="store_true", help="check the bundle, install nothing")
    args = parser.parse_args(argv)
    layout = layout_from(args)
    try:
        manifest, _, _ = verify_or_install(args.bundle, args.public_key, None if args.verify_only else layout)
    except BundleError as err:
        return report(err)
    except OSError as exc:  # a file or folder the checks above did not foresee: coded, never a traceback
        return report(
            BundleError(
                f"{exc.filename or 'a file'}: {exc.strerror or type(exc).__name__}",
                code=BundleCode.BUNDLE_INSTALL_FAILED,
                hint="check the paths and permissions given; run the installer again (it is idempotent)",
            )
        )
    if args.verify_only:
        print(f"bundle OK: {len(manifest.files)} files, release {manifest.release_id}")
    else:
        print(next_steps(layout, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
