"""Evidence through the kernel's configfs-tsm report interface (Linux >= 6.7).

ABI (Documentation/ABI/testing/configfs-tsm-report): make a directory under
``/sys/kernel/config/tsm/report``; write up to 64 bytes to ``inblob`` (and optionally
``privlevel``); read ``provider`` (``sev_guest`` or ``tdx_guest``), ``outblob`` (an SNP report or
a TDX quote; for TDX the kernel fetches the quote from the host's quote service) and, for SNP,
``auxblob`` (the certificate table). ``generation`` counts the writes to the directory; a count
other than our own writes means another process wrote in between, so the outblob may not be ours
and the attempt is repeated in a fresh directory. The directory is removed afterwards.

All file-system access goes through ``TsmFs``, the one small I/O class, so tests can emulate the
kernel's behaviour in a temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError
from enclave.providers._ioctl import errno_name
from enclave.providers.base import Evidence, check_evidence, check_report_data
from enclave.providers.certtable import endorsements

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
PROVIDER_TEES: dict[str, Tee] = {"sev_guest": Tee.SNP, "tdx_guest": Tee.TDX}
MAX_PRIVLEVEL = 3  # TSM_PRIVLEVEL_MAX
_MAX_ATTRIBUTE_READ = 1 << 20


class TsmFs:
    """Plain file operations on configfs. Binary attributes are written with one write() on one
    open file, because configfs commits a binary attribute's buffer when the file is closed."""

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written != len(data):
            raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)", str(path))

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read(_MAX_ATTRIBUTE_READ + 1)


class ConfigfsTsmProvider:
    """SEV-SNP or TDX evidence through configfs-tsm; which one is read from ``provider``.

    ``tee`` pins the expected TEE (anything else is PROVIDER_BAD_OUTPUT); left ``None`` it is
    learnt from the kernel on first use. ``privlevel`` is written when given (SNP VMPL).
    """

    name = "configfs-tsm"

    def __init__(
        self,
        root: Path | str = DEFAULT_ROOT,
        *,
        tee: Tee | None = None,
        privlevel: int | None = None,
        attempts: int = 3,
        fs: TsmFs | None = None,
    ) -> None:
        if privlevel is not None and not 0 <= privlevel <= MAX_PRIVLEVEL:
            raise NodeError(
                f"privlevel {privlevel} is outside 0..{MAX_PRIVLEVEL}", code=NodeCode.PROVIDER_UNSUPPORTED
            )
        if attempts < 1:
            raise NodeError("attempts must be at least 1", code=NodeCode.PROVIDER_UNSUPPORTED)
        self.root = Path(root)
        self._tee = tee
        self._privlevel = privlevel
        self._attempts = attempts
        self._fs = fs if fs is not None else TsmFs()

    def __repr__(self) -> str:
        tee = self._tee.value if self._tee is not None else "?"
        return f"ConfigfsTsmProvider(root={str(self.root)!r}, tee={tee!r})"

    @property
    def tee(self) -> Tee:
        return self._tee if self._tee is not None else self.probe()

    def present(self) -> bool:
        return self._fs.is_dir(self.root)

    def probe(self) -> Tee:
        """Which TEE the kernel's TSM provider serves (remembered); PROVIDER_UNAVAILABLE if none."""
        with self._entry() as entry:
            return self._provider_tee(entry)

    def get_evidence(self, report_data: bytes) -> Evidence:
        data = check_report_data(report_data)
        for _ in range(self._attempts):
            evidence = self._attempt(data)
            if evidence is not None:
                return check_evidence(evidence, tee=evidence.tee, report_data=data)
        raise NodeError(
            f"configfs-tsm: another process wrote to our report entry in each of {self._attempts} "
            "attempts, so the outblob cannot be trusted to be ours",
            code=NodeCode.PROVIDER_FAILED,
            hint="find the other process using the TSM report interface, then retry",
        )

    def _attempt(self, report_data: bytes) -> Evidence | None:
        with self._entry() as entry:
            tee = self._provider_tee(entry)
            writes = 0
            if self._privlevel is not None:
                self._write(entry / "privlevel", str(self._privlevel).encode())
                writes += 1
            self._write(entry / "inblob", report_data)
            writes += 1
            before = self._generation(entry)
            blob = self._read(entry / "outblob")
            aux = self._read(entry / "auxblob", optional=True) if tee is Tee.SNP else b""
            after = self._generation(entry)
            if before != writes or after != writes:
                return None
            certs = endorsements(aux) if aux else ()
            return Evidence(tee=tee, blob=blob, endorsements=certs, provider=self.name)

    @contextlib.contextmanager
    def _entry(self) -> Iterator[Path]:
        entry = self.root / f"sovereign-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._fs.mkdir(entry)
        except OSError as exc:
            raise self._mkdir_error(exc) from exc
        try:
            yield entry
        finally:
            # A leftover entry costs a little kernel memory and nothing else; never let cleanup
            # hide the real outcome.
            with contextlib.suppress(OSError):
                self._fs.rmdir(entry)

    def _provider_tee(self, entry: Path) -> Tee:
        raw = self._read(entry / "provider").strip()
        name = raw.decode("ascii", errors="replace")
        tee = PROVIDER_TEES.get(name)
        if tee is None:
            raise NodeError(
                f"configfs-tsm provider {name!r} is neither sev_guest nor tdx_guest",
                code=NodeCode.PROVIDER_UNSUPPORTED,
            )
        if self._tee is not None and tee is not self._tee:
            raise NodeError(
                f"configfs-tsm provider is {name!r} but {self._tee.value} evidence was expected",
                code=NodeCode.PROVIDER_BAD_OUTPUT,
            )
        self._tee = tee  # a guest's TEE cannot change while it runs: pin it after first sight
        return tee

    def _generation(self, entry: Path) -> int:
        raw = self._read(entry / "generation").strip()
        if not raw.isdigit():
            raise NodeError(
                f"configfs-tsm generation is not a number: {raw[:32]!r}", code=NodeCode.PROVIDER_BAD_OUTPUT
            )
        return int(raw)

    def _write(self, path: Path, data: bytes) -> None:
        try:
            self._fs.write(path, data)
        except FileNotFoundError as exc:
            raise self._missing(path) from exc
        except OSError as exc:
            raise _failed(f"writing {path.name}", exc) from exc

    def _read(self, path: Path, *, optional: bool = False) -> bytes:
        try:
            data = self._fs.read(path)
        except FileNotFoundError as exc:
            if optional:
                return b""
            raise self._missing(path) from exc
        except OSError as exc:
            raise _failed(f"reading {path.name}", exc) from exc
        if len(data) > _MAX_ATTRIBUTE_READ:
            raise NodeError(
                f"configfs-tsm {path.name} exceeds {_MAX_ATTRIBUTE_READ} bytes",
                code=NodeCode.PROVIDER_BAD_OUTPUT,
            )
        return data

    def _missing(self, path: Path) -> NodeError:
        return NodeError(
            f"configfs-tsm entry has no {path.name!r} attribute (kernel ABI mismatch)",
            code=NodeCode.PROVIDER_BAD_OUTPUT,
        )

    def _mkdir_error(self, exc: OSError) -> NodeError:
        if isinstance(exc, FileNotFoundError) or not self._fs.is_dir(self.root):
            return NodeError(
                f"configfs-tsm is not available: {self.root} does not exist",
                code=NodeCode.PROVIDER_UNAVAILABLE,
                hint="mount configfs (mount -t configfs none /sys/kernel/config) on a kernel >= 6.7 "
                "with the sev-guest or tdx-guest driver loaded",
            )
        if isinstance(exc, PermissionError):
            return NodeError(
                f"configfs-tsm: permission denied creating a report entry under {self.root}",
                code=NodeCode.PROVIDER_UNAVAILABLE,
                hint="run the node agent as root or grant it write access to the report directory",
            )
        if exc.errno == errno.ENXIO:
            return NodeError(
                "configfs-tsm has no TSM provider registered (this is not an SEV-SNP or TDX guest, "
                "or its guest driver is not loaded)",
                code=NodeCode.PROVIDER_UNAVAILABLE,
            )
        return _failed("creating a report entry", exc)


def _failed(what: str, exc: OSError) -> NodeError:
    return NodeError(
        f"configfs-tsm: {what} failed: {errno_name(exc)} ({exc.strerror})", code=NodeCode.PROVIDER_FAILED
    )
