"""The hash lock (``requirements.lock``) as data: entries with their marker and hashes, the runtime
closure of the project's dependencies for one target, and the subset rendered back verbatim."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from sovereign.bundle.installer import BundleCode, BundleError

_HEAD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*(.*?))?\s*\\?$")


@dataclass(frozen=True)
class LockEntry:
    name: str  # canonical
    version: str
    marker: str | None
    hashes: tuple[str, ...]
    text: str  # the entry's lines exactly as in the lock

    def applies(self, env: Mapping[str, str]) -> bool:
        return self.marker is None or Marker(self.marker).evaluate(dict(env))


def parse_lock(text: str) -> dict[str, LockEntry]:
    entries: dict[str, LockEntry] = {}
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if block and (not line.startswith((" ", "\t"))):
            entry = _entry(block)
            entries[entry.name] = entry
            block = []
        if line.strip() and not line.lstrip().startswith("#"):
            block.append(line)
    return entries


def _entry(lines: list[str]) -> LockEntry:
    head = _HEAD.match(lines[0])
    if head is None:
        raise BundleError(
            f"lock line {lines[0]!r} is not 'name==version'", code=BundleCode.BUNDLE_BUILD_FAILED
        )
    hashes = tuple(m for ln in lines[1:] for m in re.findall(r"--hash=(sha256:[0-9a-f]{64})", ln))
    if not hashes:
        raise BundleError(f"{head.group(1)} has no --hash in the lock", code=BundleCode.BUNDLE_BUILD_FAILED)
    name = canonicalize_name(head.group(1))
    return LockEntry(name, head.group(2), head.group(3), hashes, "\n".join(lines))


def target_environment(python_version: str, machine: str) -> dict[str, str]:
    """PEP 508 marker values for a CPython on Linux target."""
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_machine": machine,
        "python_version": python_version,
        "python_full_version": python_version + ".0",
        "implementation_version": python_version + ".0",
        "extra": "",
    }


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """``Requires-Dist`` of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            raise BundleError(f"{wheel.name} has no METADATA", code=BundleCode.BUNDLE_BUILD_FAILED)
        meta = HeaderParser().parsestr(zf.read(name).decode("utf-8"))
    return [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def closure(
    roots: Iterable[Requirement],
    lock: Mapping[str, LockEntry],
    wheels: Mapping[str, Path],
    env: Mapping[str, str],
) -> list[LockEntry]:
    """Lock entries needed at run time, following Requires-Dist (with extras) from ``roots``."""
    todo = list(roots)
    seen: dict[str, set[str]] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name not in lock:
            raise BundleError(
                f"{name} is needed but not in requirements.lock", code=BundleCode.BUNDLE_BUILD_FAILED
            )
        if name in seen and set(req.extras) <= seen[name]:
            continue
        extras = seen.setdefault(name, set())
        extras.update(req.extras)
        if name not in wheels:
            raise BundleError(f"no wheel downloaded for {name}", code=BundleCode.BUNDLE_BUILD_FAILED)
        for dep in wheel_requirements(wheels[name]):
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": x}) for x in {"", *extras}):
                todo.append(dep)
    return [lock[n] for n in sorted(seen) if lock[n].applies(env)]


def wheels_by_name(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for wheel in sorted(folder.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        out[name] = wheel
    return out
