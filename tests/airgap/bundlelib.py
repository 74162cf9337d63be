"""Shared by the air-gap tests and their conftest (never import a conftest)."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sovereign.bundle import archive
from sovereign.bundle.build import EXECUTABLES, BuildResult

ROOT = Path(__file__).resolve().parents[2]
STEPS_MARKER = "<!-- site-install-steps"


@dataclass(frozen=True)
class Built:
    result: BuildResult
    public_key: Path
    other_public_key: Path

    @property
    def release_id(self) -> str:
        return str(self.result.manifest["release_id"])

    @property
    def target(self) -> str:
        stem = self.result.archive.name.removesuffix(".tar.gz")
        return stem.removeprefix(f"sovereign-{self.release_id}-")


def documented_steps(doc: Path) -> str:
    """The site's install block from README.md or docs/airgap.md: the ```sh block after the marker."""
    text = doc.read_text()
    start = text.index(STEPS_MARKER)
    match = re.search(r"^[ \t]*```sh\n(.*?)^[ \t]*```$", text[start:], re.S | re.M)
    assert match, f"{doc}: no sh block after {STEPS_MARKER}"
    return textwrap.dedent(match.group(1))


def site_steps(built: Built, public_key: Path, site: Path, extra: str = "") -> str:
    """The documented block with this test's names and folders in place of the site's (``extra``: more
    installer options, e.g. the test's own service users, appended after ``--data-dir``)."""
    steps = documented_steps(ROOT / "docs" / "airgap.md")
    substitutions = [
        ("<release>", built.release_id),
        ("<target>", built.target),
        ("/etc/sovereign/release.pub.pem", str(public_key)),
        ("--prefix /opt/sovereign", f"--prefix {site}/opt"),
        ("--config-dir /etc/sovereign", f"--config-dir {site}/etc"),
        ("--data-dir /var/lib/sovereign", f"--data-dir {site}/var{extra}"),
        ("sudo ", ""),  # the tests run as root and the machine has no sudo
    ]
    for placeholder, value in substitutions:
        assert placeholder in steps, f"the documented steps no longer contain {placeholder!r}"
        steps = steps.replace(placeholder, value)
    return steps


def carry(built: Built, dest: Path) -> Path:
    """The published files, copied as a site would carry them across the air gap."""
    dest.mkdir(parents=True)
    for path in built.result.published:
        shutil.copy2(path, dest / path.name)
    return dest


def repack(built: Built, dest: Path, edit: Callable[[Path], None]) -> Path:
    """The published files with the tarball replaced by one whose contents ``edit`` changed (same name,
    same layout, the genuine SHA256SUMS and signature beside it): what an attacker in transit can make."""
    carried = carry(built, dest)
    work = dest.parent / f"{dest.name}-repack"
    with tarfile.open(built.result.archive) as tar:
        tar.extractall(work, filter="data")
    (top,) = work.iterdir()
    edit(top)
    epoch = int(str(built.result.manifest["source_date_epoch"]))
    archive.deterministic_tar(top, carried / built.result.archive.name, top.name, epoch, EXECUTABLES)
    shutil.rmtree(work)
    return carried


def plant_marker_in_install_py(marker: Path) -> Callable[[Path], None]:
    def edit(top: Path) -> None:
        script = top / "install.py"
        text = script.read_text()
        head = "from __future__ import annotations\n"
        assert head in text
        payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('install.py ran')\n"
        script.write_text(text.replace(head, head + payload, 1))

    return edit


def plant_marker_in_install_sh(marker: Path) -> Callable[[Path], None]:
    def edit(top: Path) -> None:
        script = top / "install.sh"
        text = script.read_text()
        assert "\nset -eu\n" in text
        script.write_text(text.replace("\nset -eu\n", f"\nset -eu\necho 'install.sh ran' > '{marker}'\n", 1))

    return edit


@contextmanager
def world_readable_folder() -> Iterator[Path]:
    """A folder under /tmp the service users can reach (pytest's tmp folders are 0700 under root's)."""
    base = Path(tempfile.mkdtemp(prefix="sovereign-airgap-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def system_python() -> str | None:
    """The host's own Python 3.11, as a site has it (this machine's default python3 is pyenv's, under
    /root, out of other users' reach)."""
    for candidate in ("/usr/bin/python3.11", "/usr/local/bin/python3.11"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None
