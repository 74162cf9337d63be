"""The key catalogue: named dataset/model keys, their versions and lifecycle, wrapped by the OpenBao KEK.

Only the wrapped form (``vault:vN:...``) is ever stored; plaintext exists only in the ``DataKey`` that
``unwrap`` returns (hidden from repr). Rules (names, kinds, states) live here; the ``KeyStore`` applies
each change atomically and calls back into the rule inside its transaction, so a concurrent disable and
rotate cannot interleave. Time comes from the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from kms.domain.transit import Transit, WrappedKey
from kms.envelope.names import is_valid_key_name
from kms.errors import CatalogueError, Code, OpenBaoError

DATA_KEY_BYTES = 32

Clock = Callable[[], datetime]


class KeyKind(StrEnum):
    DATASET = "dataset"  # nodes read
    MODEL = "model"  # nodes read and write checkpoints and weights


class KeyState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    DESTROYED = "destroyed"


@dataclass(frozen=True)
class KeyVersion:
    version: int
    ciphertext: str | None = field(repr=False)  # None once destroyed
    kek_version: int
    created_at: datetime
    rewrapped_at: datetime | None = None


@dataclass(frozen=True)
class KeyRecord:
    name: str
    kind: KeyKind
    state: KeyState
    current_version: int
    created_at: datetime
    updated_at: datetime
    destroyed_at: datetime | None
    versions: tuple[KeyVersion, ...]

    def version(self, number: int | None = None) -> KeyVersion:
        wanted = self.current_version if number is None else number
        for v in self.versions:
            if v.version == wanted:
                return v
        raise CatalogueError(
            f"key {self.name} has no version {wanted} (versions 1..{self.current_version})",
            code=Code.KEY_VERSION_NOT_FOUND,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "state": self.state.value,
            "current_version": self.current_version,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "destroyed_at": self.destroyed_at.isoformat() if self.destroyed_at else None,
            "versions": [
                {
                    "version": v.version,
                    "kek_version": v.kek_version,
                    "created_at": v.created_at.isoformat(),
                    "rewrapped_at": v.rewrapped_at.isoformat() if v.rewrapped_at else None,
                    "wrapped": v.ciphertext is not None,
                }
                for v in self.versions
            ],
        }


@dataclass(frozen=True)
class WrappedRecord:
    """One usable version of a key in its wrapped form: what release and export paths work with."""

    name: str
    kind: KeyKind
    version: int
    ciphertext: str = field(repr=False)
    kek_version: int


@dataclass(frozen=True)
class DataKey:
    """A plaintext data key. Keep it briefly; it never appears in repr, logs or errors."""

    name: str
    kind: KeyKind
    version: int
    plaintext: bytes = field(repr=False)
    request_id: str  # OpenBao's id for the decrypt, recorded by the audit ledger


@dataclass(frozen=True)
class StaleVersion:
    name: str
    version: int
    ciphertext: str = field(repr=False)
    kek_version: int


@dataclass(frozen=True)
class RewrapReport:
    rewrapped: int
    current: int
    failed: tuple[str, ...]  # "name vN: CODE"


Check = Callable[[KeyRecord], None]


class KeyStore(Protocol):
    """Atomic persistence for the catalogue (kms.sql.keys.SqlKeyStore implements it)."""

    def insert(self, record: KeyRecord) -> None: ...
    def load(self, name: str) -> KeyRecord | None: ...
    def all(self) -> list[KeyRecord]: ...
    def add_version(self, name: str, wrapped: WrappedKey, now: datetime, check: Check) -> KeyRecord: ...
    def set_state(self, name: str, state: KeyState, now: datetime, check: Check) -> KeyRecord: ...
    def stale_versions(self, below_kek_version: int | None) -> list[StaleVersion]: ...
    def replace_wrapped(self, stale: StaleVersion, new: WrappedKey, now: datetime) -> bool: ...


# --- pure rules ----------------------------------------------------------------------------------


def validate_name(name: str) -> str:
    if not is_valid_key_name(name):
        shown = repr(name)[:60] if isinstance(name, str) else type(name).__name__  # bounded echo
        raise CatalogueError(f"invalid key name {shown}", code=Code.KEY_NAME_INVALID)
    return name


def parse_kind(kind: str | KeyKind) -> KeyKind:
    try:
        return KeyKind(kind)
    except ValueError:
        raise CatalogueError(
            f"unknown key kind {str(kind)[:40]!r}; expected dataset or model", code=Code.KEY_WRONG_KIND
        ) from None


def require_usable(record: KeyRecord) -> None:
    """Raise unless the key may be used (unwrapped, rotated, handed out wrapped)."""
    if record.state is KeyState.DESTROYED:
        raise CatalogueError(f"key {record.name} is destroyed", code=Code.KEY_DESTROYED)
    if record.state is KeyState.DISABLED:
        raise CatalogueError(f"key {record.name} is disabled", code=Code.KEY_DISABLED)


def require_not_destroyed(record: KeyRecord) -> None:
    if record.state is KeyState.DESTROYED:
        raise CatalogueError(f"key {record.name} is destroyed", code=Code.KEY_DESTROYED)


def require_kind(record: KeyRecord, kind: KeyKind | None) -> None:
    if kind is not None and record.kind is not kind:
        raise CatalogueError(
            f"key {record.name} is a {record.kind.value} key, not a {kind.value} key",
            code=Code.KEY_WRONG_KIND,
        )


def not_found(name: str) -> CatalogueError:
    return CatalogueError(f"no key named {name!r}", code=Code.KEY_NOT_FOUND)


# --- the catalogue -------------------------------------------------------------------------------


class Catalogue:
    def __init__(self, store: KeyStore, transit: Transit | None, clock: Clock) -> None:
        """``transit=None`` serves the operations that never touch OpenBao (list, describe, state)."""
        self._store = store
        self._t = transit
        self._clock = clock

    @property
    def _transit(self) -> Transit:
        if self._t is None:
            raise OpenBaoError(
                "this operation needs OpenBao, and no connection was configured", code=Code.KMS_CONFIG_INVALID
            )
        return self._t

    def describe(self, name: str) -> KeyRecord:
        record = self._store.load(validate_name(name))
        if record is None:
            raise not_found(name)
        return record

    def list(self) -> list[KeyRecord]:
        return self._store.all()

    def create(self, name: str, kind: str | KeyKind) -> KeyRecord:
        """A new key with version 1. OpenBao is asked first, so a failure there leaves no row."""
        validate_name(name)
        key_kind = parse_kind(kind)
        if self._store.load(name) is not None:
            raise CatalogueError(f"key {name} already exists", code=Code.KEY_EXISTS)
        wrapped = self._transit.generate_wrapped_data_key()
        now = self._clock()
        record = KeyRecord(
            name=name,
            kind=key_kind,
            state=KeyState.ACTIVE,
            current_version=1,
            created_at=now,
            updated_at=now,
            destroyed_at=None,
            versions=(KeyVersion(1, wrapped.ciphertext, wrapped.kek_version, now),),
        )
        self._store.insert(record)
        return record

    def rotate(self, name: str) -> KeyRecord:
        """Add a new current version; older versions stay usable for data sealed under them."""
        require_usable(self.describe(name))
        wrapped = self._transit.generate_wrapped_data_key()
        return self._store.add_version(name, wrapped, self._clock(), require_usable)

    def add_wrapped_version(self, name: str, wrapped: WrappedKey, *, kind: KeyKind) -> KeyRecord:
        """A new current version from a data key wrapped elsewhere (a data owner's own OpenBao identity)."""
        record = self.describe(name)
        require_usable(record)
        require_kind(record, kind)
        return self._store.add_version(name, wrapped, self._clock(), require_usable)

    def disable(self, name: str) -> KeyRecord:
        return self._store.set_state(
            validate_name(name), KeyState.DISABLED, self._clock(), require_not_destroyed
        )

    def enable(self, name: str) -> KeyRecord:
        return self._store.set_state(
            validate_name(name), KeyState.ACTIVE, self._clock(), require_not_destroyed
        )

    def destroy(self, name: str) -> KeyRecord:
        """Wipe every wrapped version; the name, kind and history stay (names are never reused)."""
        return self._store.set_state(
            validate_name(name), KeyState.DESTROYED, self._clock(), require_not_destroyed
        )

    def get(self, name: str, version: int | None = None, *, kind: KeyKind | None = None) -> WrappedRecord:
        record = self.describe(name)
        require_usable(record)
        require_kind(record, kind)
        v = record.version(version)
        if v.ciphertext is None:  # only destroyed keys lose material; guard anyway (fail closed)
            raise CatalogueError(f"key {name} v{v.version} has no wrapped material", code=Code.KEY_DESTROYED)
        return WrappedRecord(record.name, record.kind, v.version, v.ciphertext, v.kek_version)

    def unwrap(self, name: str, version: int | None = None, *, kind: KeyKind | None = None) -> DataKey:
        wrapped = self.get(name, version, kind=kind)
        result = self._transit.unwrap(wrapped.ciphertext)
        if len(result.plaintext) != DATA_KEY_BYTES:
            raise OpenBaoError(
                f"key {name} v{wrapped.version} unwrapped to {len(result.plaintext)} bytes, expected "
                f"{DATA_KEY_BYTES}",
                code=Code.KMS_BAD_RESPONSE,
                hint="the stored wrapped value is not a transit data key; restore it from backup",
            )
        return DataKey(wrapped.name, wrapped.kind, wrapped.version, result.plaintext, result.request_id)

    def rotate_kek(self) -> int:
        """Rotate the KEK in OpenBao (operator credentials); follow with ``rewrap_all``."""
        return self._transit.rotate_kek()

    def rewrap_all(self, kek_version: int | None = None) -> RewrapReport:
        """Rewrap stored versions under the KEK's latest version inside OpenBao (no plaintext here).

        ``kek_version``: only versions wrapped below it are touched (None: all of them). A version that
        fails is reported and left as it was; rerunning continues where it stopped.
        """
        stale = self._store.stale_versions(kek_version)
        done, failed = 0, []
        for item in stale:
            try:
                new = self._transit.rewrap(item.ciphertext)
            except OpenBaoError as err:
                if err.code in (Code.KMS_UNAVAILABLE, Code.KMS_SEALED, Code.KMS_PERMISSION_DENIED):
                    raise
                failed.append(f"{item.name} v{item.version}: {err.code.value}")
                continue
            if new.kek_version > item.kek_version and self._store.replace_wrapped(item, new, self._clock()):
                done += 1
        return RewrapReport(rewrapped=done, current=len(stale) - done - len(failed), failed=tuple(failed))


def summary_rows(records: Sequence[KeyRecord]) -> list[dict[str, Any]]:
    """One row per key for tables: no ciphertext, just what an operator scans for."""
    rows = []
    for r in records:
        current = next((v for v in r.versions if v.version == r.current_version), None)
        rows.append(
            {
                "name": r.name,
                "kind": r.kind.value,
                "state": r.state.value,
                "version": r.current_version,
                "kek_version": current.kek_version if current else "",
                "updated_at": r.updated_at.isoformat(timespec="seconds"),
            }
        )
    return rows
