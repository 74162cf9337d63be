"""Where a workload's data keys come from: the ``KeySource`` protocol and its implementations.

A reader asks for the key a sealed file's header names (``key_ref``, ``NAME@vVERSION``) with purpose
``read``; a writer asks for the current version of a named key with purpose ``write`` and writes that
version's ``key_ref`` into the new file. Keys are 32-byte AES keys held in memory only; nothing here
logs, prints or repr's them.

- ``MemoryKeySource``: keys this process already holds (tests, a key handed over by other means).
- ``AgentSocketKeySource``: the node agent's Unix socket (``SOVEREIGN_AGENT_SOCKET``). This is the seam
  for the resident agent of issue 16; its client is NOT implemented yet and every call answers
  ``WORKLOAD_AGENT_UNAVAILABLE``.
- ``default_key_source()``: what ``open_sealed``/``create_sealed`` use when no ``keys=`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from enclave.workload.errors import WorkloadCode, WorkloadError
from kms.envelope import names

AGENT_SOCKET_ENV = "SOVEREIGN_AGENT_SOCKET"
PURPOSES = frozenset({"read", "write"})
_KEY_LEN = 32


@dataclass(frozen=True)
class DataKey:
    """A data key and the ``key_ref`` that names it in sealed-stream headers. ``repr`` hides the key."""

    key_ref: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if names.parse_key_ref(self.key_ref) is None:
            raise WorkloadError(
                f"key_ref {self.key_ref!r} is not NAME@vVERSION", code=WorkloadCode.WORKLOAD_INPUT_INVALID
            )
        if not isinstance(self.key, bytes) or len(self.key) != _KEY_LEN:
            raise WorkloadError(f"a data key is {_KEY_LEN} bytes", code=WorkloadCode.WORKLOAD_INPUT_INVALID)


@runtime_checkable
class KeySource(Protocol):
    """Hands data keys to the workload library. Implementations raise ``WorkloadError`` (coded)."""

    def read_key(self, key_ref: bytes) -> bytes:
        """The data key a sealed file's header names (``key_ref``, normally ``NAME@vVERSION``)."""
        ...

    def write_key(self, name: str) -> DataKey:
        """The current version of key ``name`` for sealing new files (purpose ``write``)."""
        ...


def _unavailable(message: str) -> WorkloadError:
    return WorkloadError(message, code=WorkloadCode.WORKLOAD_KEY_UNAVAILABLE)


def _named(key_ref: bytes) -> tuple[str, int]:
    named = names.parse_key_ref(key_ref)
    if named is None:
        raise _unavailable(f"the file's key_ref {key_ref[:64]!r} does not name a key (NAME@vVERSION)")
    return named


class MemoryKeySource:
    """Keys held by this process, each with the purposes it may be used for."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], tuple[bytes, frozenset[str]]] = {}

    def __repr__(self) -> str:
        held = ", ".join(f"{n}@v{v}" for n, v in sorted(self._keys))
        return f"MemoryKeySource([{held}])"

    def add(self, name: str, version: int, key: bytes, *, purposes: tuple[str, ...] = ("read",)) -> DataKey:
        """Hold ``key`` as version ``version`` of ``name``; returns it with its key_ref."""
        if not names.is_valid_key_name(name) or not isinstance(version, int) or version < 1:
            raise WorkloadError(
                f"{name!r} v{version!r}: the name must follow {names.KEY_NAME_RULE}, the version be >= 1",
                code=WorkloadCode.WORKLOAD_INPUT_INVALID,
            )
        if not purposes or not set(purposes) <= PURPOSES:
            raise WorkloadError(
                f"purposes must be a non-empty subset of {sorted(PURPOSES)}",
                code=WorkloadCode.WORKLOAD_INPUT_INVALID,
            )
        data_key = DataKey(names.format_key_ref(name, version), key)
        self._keys[(name, version)] = (data_key.key, frozenset(purposes))
        return data_key

    def read_key(self, key_ref: bytes) -> bytes:
        name, version = _named(key_ref)
        held = self._keys.get((name, version))
        if held is None or "read" not in held[1]:
            raise _unavailable(f"no key {name} v{version} held for reading")
        return held[0]

    def write_key(self, name: str) -> DataKey:
        versions = [v for (n, v), (_, purposes) in self._keys.items() if n == name and "write" in purposes]
        if not versions:
            raise _unavailable(f"no key {name!r} held for writing")
        version = max(versions)
        return DataKey(names.format_key_ref(name, version), self._keys[(name, version)][0])


class AgentSocketKeySource:
    """The node agent's local API on a Unix socket: the seam for the resident agent (issue 16).

    NOT IMPLEMENTED: the agent and its socket protocol do not exist yet. When they do, this class
    connects to ``path``, asks for ``read_key``/``write_key`` with the purpose, and returns what the
    agent hands out (the agent checks the caller with SO_PEERCRED and logs the handout). Until then
    every call raises ``WORKLOAD_AGENT_UNAVAILABLE`` rather than pretending.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"AgentSocketKeySource(path={self.path!r})"

    def _not_implemented(self) -> WorkloadError:
        return WorkloadError(
            f"the node agent's socket API ({self.path}) is not available in this release",
            code=WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE,
            hint="pass keys=MemoryKeySource(...) with keys fetched by the node agent (`sovereign node fetch-key`)",
        )

    def read_key(self, key_ref: bytes) -> bytes:
        _named(key_ref)
        raise self._not_implemented()

    def write_key(self, name: str) -> DataKey:
        raise self._not_implemented()


def default_key_source(environ: Mapping[str, str] | None = None) -> KeySource:
    """The node agent named by ``SOVEREIGN_AGENT_SOCKET``; ``WORKLOAD_NO_KEY_SOURCE`` if it is unset."""
    env = os.environ if environ is None else environ
    path = env.get(AGENT_SOCKET_ENV, "")
    if not path:
        raise WorkloadError(
            f"{AGENT_SOCKET_ENV} is not set and no keys= were given", code=WorkloadCode.WORKLOAD_NO_KEY_SOURCE
        )
    return AgentSocketKeySource(path)
