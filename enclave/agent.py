"""The node agent: attest, keep the lease alive, fetch sealed keys, open and seal data streams.

One ``NodeAgent`` is one node: its ``NodeIdentity`` (HPKE + Ed25519 keys) lives only in this process's
memory, so registration and every key fetch happen in the same process. Released data keys are
returned to the caller or used for one file and then dropped; nothing here caches or persists them.
``write_key_file`` is the one way a key reaches a file: a new 0600 file on a memory-backed filesystem.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from enclave.client import ControlPlaneClient, ControlPlaneError, NodeState, Registration
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.output_request import sign_output
from enclave.providers.base import Evidence, EvidenceProvider
from enclave.providers.gpu import GpuEvidenceSource, NoGpu
from enclave.release_request import (
    REQUEST_ID_LEN,
    ReleasedKey,
    ReleaseFields,
    check_key_name,
    check_purpose,
    open_grant,
    sign_release,
)
from enclave.workload.output_report import OutputReport
from kms.envelope import DEFAULT_CHUNK_SIZE, StreamInfo, decrypt_stream, names, read_header
from kms.envelope.files import decrypt_file, encrypt_file
from kms.envelope.stream import Writable
from proto.contract import GpuEvidenceItem, GpuEvidenceRejected, gpu_commitment, gpu_nonce

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
PROC_MOUNTS = Path("/proc/mounts")


def system_clock() -> datetime:
    return datetime.now(UTC)


# --- key references in sealed-stream headers ---------------------------------------------------------


def format_key_ref(key_name: str, key_version: int) -> str:
    """``NAME@vVERSION``: the key_ref a node writes into the streams it seals."""
    return names.format_key_ref(check_key_name(key_name), key_version)


def parse_key_ref(key_ref: bytes) -> tuple[str, int] | None:
    """(key name, version) from a ``NAME@vVERSION`` key_ref, or None if it has another shape."""
    return names.parse_key_ref(key_ref)


# --- writing a key to a file -------------------------------------------------------------------------


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def filesystem_type(directory: str, mounts: str) -> str:
    """The type of the filesystem holding the absolute, resolved ``directory``, from /proc/mounts text."""
    best, fstype = -1, ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = _unescape_mount(parts[1])
        inside = directory == point or directory.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # later mounts on the same point hide earlier ones
            best, fstype = len(point), parts[2]
    return fstype


def _unsafe(message: str) -> NodeError:
    return NodeError(message, code=NodeCode.KEY_OUTPUT_UNSAFE)


def check_key_path(path: Path, *, mounts: str, force_non_tmpfs: bool = False) -> Path:
    """The resolved target for a key file; KEY_OUTPUT_UNSAFE unless its directory is on tmpfs/ramfs."""
    directory = Path(os.path.realpath(path.parent))
    if not directory.is_dir():
        raise _unsafe(f"{path.parent} is not a directory")
    fstype = filesystem_type(str(directory), mounts)
    if fstype not in MEMORY_FILESYSTEMS and not force_non_tmpfs:
        raise _unsafe(
            f"{directory} is on a {fstype or 'unknown'} filesystem, not tmpfs: the key could reach a disk"
        )
    return directory / path.name


def write_key_file(
    path: str | os.PathLike[str],
    key: bytes,
    *,
    force_non_tmpfs: bool = False,
    mounts_file: Path = PROC_MOUNTS,
) -> Path:
    """Write ``key`` to a NEW file (0600, never following a symlink) in a tmpfs directory."""
    target = check_key_path(Path(path), mounts=mounts_file.read_text(), force_non_tmpfs=force_non_tmpfs)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise _unsafe(f"{target} already exists; remove it or choose a new path") from None
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(key)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        raise
    os.close(fd)
    return target


# --- where decrypted plaintext may go ----------------------------------------------------------------


def _plaintext_unsafe(message: str) -> NodeError:
    return NodeError(message, code=NodeCode.PLAINTEXT_OUTPUT_UNSAFE)


def check_plaintext_path(path: Path, *, mounts: str, force_non_tmpfs: bool = False) -> Path:
    """The resolved output path for decrypted data; PLAINTEXT_OUTPUT_UNSAFE unless its directory is on
    tmpfs/ramfs (or ``force_non_tmpfs``)."""
    directory = Path(os.path.realpath(path.parent))
    if not directory.is_dir():
        raise _plaintext_unsafe(f"{path.parent} is not a directory")
    fstype = filesystem_type(str(directory), mounts)
    if fstype not in MEMORY_FILESYSTEMS and not force_non_tmpfs:
        raise _plaintext_unsafe(
            f"{directory} is on a {fstype or 'unknown'} filesystem, not tmpfs: the plaintext would reach a disk"
        )
    return directory / path.name


def check_plaintext_stream(fd: int, *, mounts: str, force_non_tmpfs: bool = False) -> None:
    """A descriptor to stream plaintext to: pipes, sockets and terminals pass; a regular file must be on
    tmpfs/ramfs (a shell redirect ``> file`` writes to disk as surely as an output path); a block device
    never passes unless ``force_non_tmpfs``."""
    mode = os.fstat(fd).st_mode
    if force_non_tmpfs or not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        return
    if stat.S_ISBLK(mode):
        raise _plaintext_unsafe(f"descriptor {fd} is a block device: the plaintext would reach a disk")
    target = os.readlink(f"/proc/self/fd/{fd}")
    if not target.startswith("/") or target.endswith(" (deleted)"):
        raise _plaintext_unsafe(f"descriptor {fd} is a file whose filesystem cannot be told ({target!r})")
    check_plaintext_path(Path(target), mounts=mounts)


def check_plaintext_output(
    out: str | os.PathLike[str] | Writable, *, mounts: str, force_non_tmpfs: bool = False
) -> None:
    """``check_plaintext_path`` for a path, ``check_plaintext_stream`` for a stream with a descriptor;
    a stream without one (in memory, a hash) passes."""
    if isinstance(out, str | os.PathLike):
        check_plaintext_path(Path(out), mounts=mounts, force_non_tmpfs=force_non_tmpfs)
        return
    fileno = getattr(out, "fileno", None)
    try:
        fd = int(fileno()) if fileno is not None else None
    except (OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
        fd = None
    if fd is not None:
        check_plaintext_stream(fd, mounts=mounts, force_non_tmpfs=force_non_tmpfs)


# --- the agent ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileResult:
    """What ``decrypt``/``encrypt`` did (public facts only)."""

    key_name: str
    key_version: int
    audit_sequence: int
    plaintext_bytes: int
    ciphertext_bytes: int
    chunks: int
    header_sha256: str

    @classmethod
    def of(cls, released: ReleasedKey, info: StreamInfo) -> FileResult:
        return cls(
            released.key_name,
            released.key_version,
            released.audit_sequence,
            info.plaintext_bytes,
            info.ciphertext_bytes,
            info.chunks,
            info.header_sha256.hex(),
        )


def renewal_delay(now: datetime, expires_at: datetime, margin: timedelta) -> float:
    """Seconds until ``margin`` before the lease expires (0 if that moment has passed)."""
    return max(0.0, (expires_at - margin - now).total_seconds())


class NodeAgent:
    """A node talking to one control plane with one evidence provider and one identity."""

    def __init__(
        self,
        client: ControlPlaneClient,
        provider: EvidenceProvider,
        identity: NodeIdentity,
        *,
        node_name: str,
        groups: Sequence[str] = (),
        clock: Clock = system_clock,
        gpus: GpuEvidenceSource | None = None,
    ) -> None:
        self.client = client
        self.provider = provider
        self.gpus: GpuEvidenceSource = gpus if gpus is not None else NoGpu()
        self.identity = identity
        self.node_name = node_name
        self.groups = tuple(groups)
        self._clock = clock
        self._lock = threading.Lock()
        self._registration: Registration | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_renewal_error: NodeError | None = None

    def __repr__(self) -> str:
        return f"NodeAgent(node_name={self.node_name!r}, node_id={self.node_id!r}, provider={self.provider.name!r})"

    @property
    def registration(self) -> Registration | None:
        with self._lock:
            return self._registration

    @property
    def node_id(self) -> str:
        registration = self.registration
        return registration.node_id if registration else ""

    # attestation ------------------------------------------------------------------------------------

    def _gpu_evidence(self, nonce: bytes) -> tuple[GpuEvidenceItem, ...]:
        """The GPUs' evidence over the transcript's GPU nonce (ARCHITECTURE.md, "GPU evidence in registration")."""
        keys = self.identity
        collected = self.gpus.collect(gpu_nonce(nonce, keys.kem_suite, keys.kem_public, keys.signing_public))
        items = tuple(GpuEvidenceItem(g.report, g.chain, g.declared_architecture or "") for g in collected)
        try:
            gpu_commitment(items)
        except GpuEvidenceRejected as exc:
            raise NodeError(f"GPU evidence: {exc}", code=NodeCode.PROVIDER_BAD_OUTPUT) from None
        return items

    def _fresh_evidence(self) -> tuple[bytes, Evidence, tuple[GpuEvidenceItem, ...]]:
        challenge = self.client.challenge(self.node_name)
        if self.identity.kem_suite not in challenge.accepted_suites:
            raise NodeError(
                f"the control plane does not accept this node's HPKE suite {self.identity.suite.name}",
                code=NodeCode.REGISTRATION_REJECTED,
                hint="create the identity with a suite from the Challenge's accepted list",
            )
        gpus = self._gpu_evidence(challenge.nonce)
        report_data = self.identity.report_data(challenge.nonce, gpu_commitment=gpu_commitment(gpus))
        return challenge.nonce, self.provider.get_evidence(report_data), gpus

    def register(self) -> Registration:
        """Challenge, evidence over this identity's keys (and GPUs), Register. Returns the outcome as given."""
        nonce, evidence, gpus = self._fresh_evidence()
        result = self.client.register(
            nonce=nonce,
            evidence=evidence,
            identity=self.identity,
            node_name=self.node_name,
            groups=self.groups,
            gpus=gpus,
        )
        if result.node_id:
            with self._lock:
                self._registration = result
        log.info("register: node %s is %s", result.node_id or "-", result.state.value)
        return result

    def renew(self) -> Registration:
        """Fresh nonce and evidence, same keys. A non-ATTESTED outcome leaves the known lease as it was."""
        node_id = self._require_node_id()
        nonce, evidence, gpus = self._fresh_evidence()
        result = self.client.renew(
            node_id=node_id,
            nonce=nonce,
            evidence=evidence,
            identity=self.identity,
            gpus=gpus,
        )
        if result.node_id and result.node_id != node_id:
            raise ControlPlaneError(
                f"Renew of {node_id} answered for {result.node_id}",
                code=NodeCode.CONTROL_PLANE_ERROR,
                status="OK",
            )
        if result.state is NodeState.ATTESTED:
            with self._lock:
                self._registration = result
        log.info("renew: node %s is %s", node_id, result.state.value)
        return result

    def require_attested(self, result: Registration) -> Registration:
        """``result`` if ATTESTED, else a NodeError naming the state and the server's reasons."""
        if result.state is NodeState.ATTESTED:
            return result
        reasons = "; ".join(f"{r.code}: {r.message}" for r in result.reasons) or "no reasons given"
        code = (
            NodeCode.REGISTRATION_REJECTED
            if result.state is NodeState.REJECTED
            else NodeCode.NODE_NOT_ATTESTED
        )
        raise NodeError(f"node {result.node_id or '-'} is {result.state.value}: {reasons}", code=code)

    def _require_node_id(self) -> str:
        node_id = self.node_id
        if not node_id:
            raise NodeError("this agent has not registered", code=NodeCode.NODE_NOT_ATTESTED)
        return node_id

    # key release ------------------------------------------------------------------------------------

    def release(self, key_name: str, purpose: str = "read", key_version: int = 0) -> ReleasedKey:
        """A signed release request; the reply is checked (fields, AAD) before the key is opened."""
        fields = ReleaseFields(
            node_id=self._require_node_id(),
            key_name=check_key_name(key_name),
            purpose=check_purpose(purpose),
            request_id=secrets.token_bytes(REQUEST_ID_LEN),
            timestamp=self._clock(),
            key_version=key_version,
        )
        grant = self.client.release_key(sign_release(self.identity, fields))
        released = open_grant(self.identity.kem_private_key(), fields, grant)
        log.info(
            "released %s v%d for %s (audit sequence %d)",
            released.key_name,
            released.key_version,
            released.purpose,
            released.audit_sequence,
        )
        return released

    def record_output(self, report: OutputReport) -> int:
        """Record a sealed output with the control plane (signed, replay-protected); its ledger sequence."""
        signed = sign_output(
            self.identity,
            self._require_node_id(),
            report,
            request_id=secrets.token_bytes(REQUEST_ID_LEN),
            timestamp=self._clock(),
        )
        sequence = self.client.record_output(signed.body, signed.signature)
        log.info("recorded output %s (%s@v%d) at audit sequence %d", report.sha256[:16], report.key_name,
                 report.key_version, sequence)  # fmt: skip
        return sequence

    def fetch_key(self, key_name: str, purpose: str = "read", key_version: int = 0) -> bytes:
        return self.release(key_name, purpose, key_version).key

    def fetch_key_to_file(
        self,
        key_name: str,
        path: str | os.PathLike[str],
        *,
        purpose: str = "read",
        key_version: int = 0,
        force_non_tmpfs: bool = False,
        mounts_file: Path = PROC_MOUNTS,
    ) -> tuple[ReleasedKey, Path]:
        """Release a key into a new 0600 file on tmpfs; the path is checked before anything is released."""
        check_key_path(Path(path), mounts=mounts_file.read_text(), force_non_tmpfs=force_non_tmpfs)
        released = self.release(key_name, purpose, key_version)
        written = write_key_file(path, released.key, force_non_tmpfs=force_non_tmpfs, mounts_file=mounts_file)
        return released, written

    def decrypt(
        self,
        key_name: str | None,
        in_path: str | os.PathLike[str],
        out: str | os.PathLike[str] | Writable,
        *,
        force_non_tmpfs: bool = False,
        mounts_file: Path = PROC_MOUNTS,
    ) -> FileResult:
        """Open a sealed stream; the key (and version) come from its header's key_ref when it names one.

        ``out`` is a path (written atomically; refused with PLAINTEXT_OUTPUT_UNSAFE unless on tmpfs or
        ``force_non_tmpfs``) or a binary stream that gets each chunk once it authenticated (a stream on
        a descriptor is checked the same way; a failure can leave earlier, verified chunks written).
        Output is checked before the key is released."""
        check_plaintext_output(out, mounts=mounts_file.read_text(), force_non_tmpfs=force_non_tmpfs)
        with open(in_path, "rb") as src:
            key_ref = read_header(src).key_ref
        named = parse_key_ref(key_ref)
        if named is None and key_name is None:
            raise NodeError(
                f"{in_path}: its key_ref does not name a key (NAME@vN); pass the key name",
                code=NodeCode.KEY_REF_MISMATCH,
            )
        if named is not None and key_name is not None and named[0] != key_name:
            raise NodeError(
                f"{in_path} was sealed with {named[0]!r} v{named[1]}, not {key_name!r}",
                code=NodeCode.KEY_REF_MISMATCH,
            )
        name, version = named if named is not None else (str(key_name), 0)
        released = self.release(name, "read", version)
        if isinstance(out, str | os.PathLike):
            return FileResult.of(released, decrypt_file(released.key, in_path, out))
        with open(in_path, "rb", buffering=0) as src:
            return FileResult.of(released, decrypt_stream(released.key, src, out))

    def encrypt(
        self,
        key_name: str,
        in_path: str | os.PathLike[str],
        out_path: str | os.PathLike[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> FileResult:
        """Seal a model output with the latest version of a MODEL key (purpose write)."""
        released = self.release(key_name, "write")
        ref = format_key_ref(released.key_name, released.key_version)
        return FileResult.of(
            released, encrypt_file(released.key, in_path, out_path, key_ref=ref, chunk_size=chunk_size)
        )

    # lease renewal ----------------------------------------------------------------------------------

    def reattest(self) -> Registration:
        """Renew; register afresh (same keys) only if the control plane no longer knows this node."""
        try:
            return self.require_attested(self.renew())
        except ControlPlaneError as exc:
            if exc.reason != "NODE_NOT_FOUND":
                raise
            log.warning("renew: the control plane does not know node %s; registering again", self.node_id)
            return self.require_attested(self.register())

    def start_renewal(
        self, margin: timedelta, *, retry: timedelta = timedelta(seconds=10), min_interval: float = 1.0
    ) -> None:
        """Re-attest in a background thread whenever the lease is within ``margin`` of expiry."""
        if margin <= timedelta(0) or retry <= timedelta(0) or min_interval <= 0:
            raise NodeError("margin, retry and min_interval must be positive", code=NodeCode.CONFIG_INVALID)
        if self._thread is not None:
            raise NodeError("lease renewal is already running", code=NodeCode.CONFIG_INVALID)
        self._require_node_id()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._renewal_loop,
            args=(margin, retry.total_seconds(), min_interval),
            name=f"lease-renewal-{self.node_name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _renewal_loop(self, margin: timedelta, retry: float, min_interval: float) -> None:
        while True:
            registration = self.registration
            lease = registration.lease if registration else None
            delay = retry if lease is None else renewal_delay(self._clock(), lease.expires_at, margin)
            if self._stop.wait(max(delay, min_interval)):
                return
            try:
                self.reattest()
                self.last_renewal_error = None
            except NodeError as exc:
                self.last_renewal_error = exc
                log.warning("lease renewal failed: %s", exc.code.value)
                if self._stop.wait(retry):
                    return
