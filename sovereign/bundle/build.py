"""``sovereign bundle build``: one signed, reproducible archive for an air-gapped install.

Runs on a connected machine. Wheels come from the package index through ``pip download`` (hash-checked
against ``requirements.lock``, cached under ``var/bundle-cache``); the project's own wheel is built from
the source tree with ``SOURCE_DATE_EPOCH`` set to the commit time and then normalised. Everything is
listed in ``manifest.json`` (path, size, SHA-256), which is signed with the Ed25519 release key.

Beside the tarball go a copy of its manifest and a ``SHA256SUMS`` file naming both, with a detached
Ed25519 signature: a site checks those with ``openssl`` and ``sha256sum`` before it extracts anything,
so no code from the bundle runs before the bundle is verified (docs/airgap.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing
from packaging.requirements import Requirement

from sovereign.bundle import archive, lockfile
from sovereign.bundle import installer as inst
from sovereign.bundle.installer import BundleCode, BundleError

EXECUTABLES = frozenset({"install.sh", "install.py"})
# Demo and test material that never goes into a production install: the Keycloak stand-in (dev realm)
# and the demo policy (it admits simulated evidence).
DEV_ONLY_DEPLOY = ("dev-realm",)
DEV_ONLY_POLICIES = frozenset({"demo.toml"})
NO_COLLATERAL_WARNING = (
    "no collateral bundle included (--collateral): the site must import AMD/Intel collateral separately "
    "before any node can attest (sovereign collateral fetch --out FILE, then build with --collateral FILE)"
)


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class Target:
    python_version: str = "3.11"
    machine: str = "x86_64"
    glibc: str = "2.34"  # newest manylinux the target's glibc runs (cryptography/pynacl need 2.34)

    def platforms(self) -> list[str]:
        major, minor = (int(x) for x in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        return tags + [f"{name}_{self.machine}" for m, name in legacy.items() if m <= minor]

    @property
    def tag(self) -> str:
        return f"cp{self.python_version.replace('.', '')}-{self.machine}-glibc{self.glibc}"


@dataclass
class BuildOptions:
    repo: Path
    out_dir: Path
    signing_key: nacl.signing.SigningKey
    cache: Path
    target: Target = field(default_factory=Target)
    collateral: Path | None = None  # a signed collateral bundle to ship
    from_worktree: bool = False  # the committed tree (default) or the working tree, untracked files too
    progress: Callable[[str], None] = _quiet  # one line per stage, for people watching a long build


@dataclass(frozen=True)
class BuildResult:
    archive: Path
    manifest: dict[str, object]
    manifest_sha256: str
    sums: Path  # SHA256SUMS beside the archive (archive + published manifest); signed in sums + ".sig"
    published_manifest: Path  # manifest.json beside the archive, to read before extracting
    warnings: tuple[str, ...] = ()

    @property
    def sums_signature(self) -> Path:
        return inst.sums_signature_for(self.archive)

    @property
    def published(self) -> list[Path]:
        """What a site carries across the air gap."""
        return [self.archive, self.published_manifest, self.sums, self.sums_signature]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def _fail(message: str, hint: str = "") -> BundleError:
    return BundleError(message, code=BundleCode.BUNDLE_BUILD_FAILED, hint=hint)


def export_source(repo: Path, dest: Path, *, from_worktree: bool) -> tuple[str, int, bool]:
    """The tree to build (committed, or the working tree with untracked files, ignored ones excluded);
    returns (commit, commit time, dirty)."""
    try:
        commit = _git(repo, "rev-parse", "HEAD").strip()
        epoch = int(_git(repo, "log", "-1", "--format=%ct").strip())
        dirty = bool(_git(repo, "status", "--porcelain").strip())
    except (subprocess.CalledProcessError, FileNotFoundError, ValueError):
        raise _fail(f"{repo} is not a git checkout", "build from the project's repository") from None
    dest.mkdir(parents=True)
    if from_worktree:
        names = _git(repo, "ls-files", "-z", "-co", "--exclude-standard").split("\0")
        for name in sorted(n for n in names if n):
            src = repo / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        archive_bytes = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", commit], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive_bytes, check=True)
    return commit, epoch, dirty and from_worktree


def _pip_env(epoch: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def _pip(args: Sequence[str], what: str, env: dict[str, str]) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise _fail(f"{what} failed:\n{tail}")


def project_wheel(source: Path, dest: Path, epoch: int) -> Path:
    """The project's wheel, built without the network and normalised for reproducibility."""
    with tempfile.TemporaryDirectory(prefix="sovereign-wheel-") as tmp:
        env = _pip_env(epoch) | {"PIP_NO_INDEX": "1"}
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", tmp, str(source)],
            "building the wheel",
            env,
        )
        built = sorted(Path(tmp).glob("sovereign-*.whl"))
        if len(built) != 1:
            raise _fail("building the project's wheel produced no single sovereign-*.whl")
        out = dest / built[0].name
        archive.normalise_wheel(built[0], out, epoch)
    return out


def _cached_ok(entry: lockfile.LockEntry, wheels: dict[str, Path]) -> bool:
    wheel = wheels.get(entry.name)
    return wheel is not None and f"sha256:{inst.sha256_file(wheel)}" in entry.hashes


def download_wheels(
    lock_path: Path, lock: dict[str, lockfile.LockEntry], target: Target, cache: Path
) -> dict[str, Path]:
    """Every lock entry for the target as a binary wheel in ``cache`` (downloaded only if missing);
    each wheel's hash is checked against the lock, cached or not."""
    folder = cache / f"wheels-{target.tag}"
    folder.mkdir(parents=True, exist_ok=True)
    env_markers = lockfile.target_environment(target.python_version, target.machine)
    wanted = [e for e in lock.values() if e.applies(env_markers)]
    if not all(_cached_ok(e, lockfile.wheels_by_name(folder)) for e in wanted):
        args = ["download", "--quiet", "--require-hashes", "--no-deps", "--only-binary=:all:"]
        for platform in target.platforms():
            args += ["--platform", platform]
        abi = "cp" + target.python_version.replace(".", "")
        args += ["--python-version", target.python_version, "--implementation", "cp", "--abi", abi]
        args += ["-d", str(folder)]
        _pip([*args, "-r", str(lock_path)], "pip download (needs the package index)", _pip_env())
    wheels = lockfile.wheels_by_name(folder)
    for entry in wanted:
        if not _cached_ok(entry, wheels):
            raise _fail(f"no wheel for {entry.name}=={entry.version} matching a hash in the lock")
    return wheels


def _project(source: Path) -> tuple[str, list[Requirement]]:
    doc = tomllib.loads((source / "pyproject.toml").read_text())
    return str(doc["project"]["version"]), [Requirement(r) for r in doc["project"]["dependencies"]]


def stage(options: BuildOptions, work: Path) -> tuple[Path, dict[str, object], int]:
    """Lay the bundle out in ``work/stage``; returns (folder, manifest document, epoch)."""
    source, stage_dir = work / "source", work / "stage"
    if options.collateral is not None and not options.collateral.is_file():
        raise _fail(f"no collateral bundle at {options.collateral}", "sovereign collateral fetch --out FILE")
    say = options.progress
    say(f"exporting the {'working tree' if options.from_worktree else 'committed tree'} of {options.repo}")
    commit, epoch, dirty = export_source(options.repo, source, from_worktree=options.from_worktree)
    version, deps = _project(source)
    lock_text = (source / "requirements.lock").read_text()
    lock = lockfile.parse_lock(lock_text)
    say(f"wheels for {options.target.tag}: hash-checked against requirements.lock (cache {options.cache})")
    wheels = download_wheels(source / "requirements.lock", lock, options.target, options.cache)
    env = lockfile.target_environment(options.target.python_version, options.target.machine)
    runtime = lockfile.closure(deps, lock, wheels, env)

    (stage_dir / inst.WHEELS).mkdir(parents=True)
    for entry in runtime:
        _link(wheels[entry.name], stage_dir / inst.WHEELS / wheels[entry.name].name)
    say(f"{len(runtime)} runtime wheels staged; building the project's own wheel")
    own = project_wheel(source, stage_dir / inst.WHEELS, epoch)
    own_line = f"sovereign=={version} \\\n    --hash=sha256:{inst.sha256_file(own)}"
    requirements = "\n".join([e.text for e in runtime] + [own_line]) + "\n"
    (stage_dir / inst.REQUIREMENTS).write_text(requirements)
    shutil.copy2(source / "requirements.lock", stage_dir / "requirements.lock")
    for sub in ("deploy", "docs"):
        if (source / sub).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", *(DEV_ONLY_DEPLOY if sub == "deploy" else ()))
            shutil.copytree(source / sub, stage_dir / sub, ignore=ignore)
    if (source / "policies" / "defaults").is_dir():
        for policy in sorted((source / "policies" / "defaults").glob("*.toml")):
            if policy.name in DEV_ONLY_POLICIES:
                continue
            dest = stage_dir / "deploy" / "config" / "policies" / policy.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(policy, dest)
    shipped = {"install.sh": "deploy/bundle/install.sh", "install.py": "sovereign/bundle/installer.py"}
    for name, rel in shipped.items():
        if not (source / rel).is_file():
            raise _fail(f"the source tree has no {rel}", "build from a commit that has the offline bundle")
        shutil.copy2(source / rel, stage_dir / name)
    shutil.rmtree(stage_dir / "deploy" / "bundle", ignore_errors=True)
    if options.collateral is not None:
        (stage_dir / "collateral").mkdir()
        shutil.copy2(options.collateral, stage_dir / "collateral" / options.collateral.name)

    say("hashing every file for the manifest")
    files = [
        {"path": rel, "size": (stage_dir / rel).stat().st_size, "sha256": inst.sha256_file(stage_dir / rel)}
        for rel in inst.walk_files(stage_dir)
    ]
    content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    manifest: dict[str, object] = {
        "format": inst.FORMAT,
        "name": "sovereign",
        "version": version,
        "commit": commit,
        "dirty": dirty,
        "source_date_epoch": epoch,
        "release_id": f"{version}-{content[:12]}",
        "target": {
            "python": options.target.python_version,
            "machine": options.target.machine,
            "glibc": options.target.glibc,
        },
        "files": files,
    }
    return stage_dir, manifest, epoch


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def manifest_bytes(manifest: dict[str, object]) -> bytes:
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()


def build(options: BuildOptions) -> BuildResult:
    with tempfile.TemporaryDirectory(prefix="sovereign-bundle-") as tmp:
        stage_dir, manifest, epoch = stage(options, Path(tmp))
        data = manifest_bytes(manifest)
        (stage_dir / inst.MANIFEST).write_bytes(data)
        (stage_dir / inst.SIGNATURE).write_bytes(options.signing_key.sign(data).signature)
        top = f"sovereign-{manifest['release_id']}"
        options.out_dir.mkdir(parents=True, exist_ok=True)
        out = options.out_dir / f"{top}-{options.target.tag}{inst.ARCHIVE_SUFFIX}"
        options.progress(f"manifest signed; writing {out}")
        archive.deterministic_tar(stage_dir, out, top, epoch, EXECUTABLES)
    published_manifest, sums = publish_beside(out, data, options.signing_key)
    warnings = () if options.collateral is not None else (NO_COLLATERAL_WARNING,)
    return BuildResult(out, manifest, hashlib.sha256(data).hexdigest(), sums, published_manifest, warnings)


def publish_beside(tarball: Path, manifest: bytes, key: nacl.signing.SigningKey) -> tuple[Path, Path]:
    """The manifest, ``SHA256SUMS`` (tarball and manifest) and its detached signature next to the
    tarball; returns (manifest, sums)."""
    stem = inst.archive_stem(tarball)
    published_manifest = tarball.with_name(stem + inst.MANIFEST_SUFFIX)
    published_manifest.write_bytes(manifest)
    sums = inst.sums_for(tarball)
    text = inst.sums_text(
        [
            (tarball.name, inst.sha256_file(tarball)),
            (published_manifest.name, hashlib.sha256(manifest).hexdigest()),
        ]
    )
    sums.write_bytes(text)
    inst.sums_signature_for(tarball).write_bytes(key.sign(text).signature)
    return published_manifest, sums
