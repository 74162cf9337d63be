"""Where a workload's data keys come from: the ``KeySource`` protocol and its implementations.

A reader asks for the key a sealed file's header names (``key_ref``, ``NAME@vVERSION``) with purpose
``read``; a writer asks for the current version of a named key with purpose ``write`` and writes that
version's ``key_ref`` into the new file. Keys are 32-byte AES keys held in memory only; nothing here
logs, prints or repr's them.

- ``MemoryKeySource``: keys this process already holds (tests, a key handed over by other means).
- ``AgentSocketKeySource``: the resident node agent's Unix socket (``SOVEREIGN_AGENT_SOCKET``, set by
  ``sovereign node exec``); protocol in ``enclave.workload.agent_api``.
- ``default_key_source()``: what ``open_sealed``/``create_sealed`` use when no ``keys=`` is given.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from enclave.workload import agent_api
from enclave.workload.errors import WorkloadCode, WorkloadError
from enclave.workload.output_report import OutputReport
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


class AgentRefused(WorkloadError):
    """The node agent answered with a refusal; ``reason`` is its code (``enclave.workload.agent_api``)."""

    def __init__(
        self,
        message: str,
        *,
        code: WorkloadCode,
        reason: str,
        hint: str | None = None,
        reply: dict[str, Any] | None = None,
    ) -> None:
        self.reason = reason
        self.reply = reply or {}  # the agent's whole answer (a STREAM_FAILED one names the chunk)
        super().__init__(message, code=code, hint=hint)

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "reason": self.reason}


# Refusals about the agent itself (rather than about a key) are WORKLOAD_AGENT_UNAVAILABLE.
_AGENT_REASONS = frozenset(
    {agent_api.PEER_REFUSED, agent_api.REQUEST_INVALID, agent_api.AGENT_ERROR, agent_api.STREAM_UNKNOWN}
)


class AgentSocketKeySource:
    """The node agent's local API on a Unix socket (``sovereign node agent`` / ``node exec``).

    Each call is one request on a fresh connection (``enclave.workload.agent_api``); the agent checks
    the caller with SO_PEERCRED and logs the handout. An agent that cannot be reached (not running,
    killed) is ``WORKLOAD_AGENT_UNAVAILABLE``; a key the agent refuses (node revoked, key denied, lease
    lapsed) is ``WORKLOAD_KEY_UNAVAILABLE`` with the agent's code in ``reason``.
    """

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AgentSocketKeySource(path={self.path!r})"

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = agent_api.call(self.path, request, timeout=self.timeout)
        except (OSError, agent_api.ApiError) as exc:
            raise self._unreachable(exc) from None
        return self._answer(reply)

    def call_stream(
        self, request: dict[str, Any], payload: bytes | memoryview | None, *, into: memoryview | None = None
    ) -> tuple[dict[str, Any], memoryview]:
        """A sealed-stream request (``agent_api.STREAM_OPS``): the answer and its payload (received into
        ``into`` when it has room)."""
        try:
            reply, data = agent_api.call_with_payload(
                self.path, request, payload, timeout=self.timeout, into=into
            )
        except (OSError, agent_api.ApiError) as exc:
            raise self._unreachable(exc) from None
        return self._answer(reply), data

    def _unreachable(self, exc: Exception) -> WorkloadError:
        return WorkloadError(
            f"cannot reach the node agent at {self.path}: {getattr(exc, 'strerror', None) or exc}",
            code=WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE,
        )

    def _answer(self, reply: dict[str, Any]) -> dict[str, Any]:
        if reply.get("ok") is True:
            return reply
        reason = str(reply.get("code", agent_api.AGENT_ERROR))[:64]
        code = (
            WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE
            if reason in _AGENT_REASONS
            else WorkloadCode.WORKLOAD_KEY_UNAVAILABLE
        )
        message = str(reply.get("message", ""))[:500]
        hint = str(reply.get("hint", ""))[:500] or None
        raise AgentRefused(
            f"the node agent refused: {reason}: {message}", code=code, reason=reason, hint=hint, reply=reply
        )

    def _key(self, name: str, purpose: str, version: int) -> DataKey:
        reply = self._call({"op": "key", "name": name, "purpose": purpose, "version": version})
        try:
            key = base64.b64decode(str(reply["key"]), validate=True)
            data_key = DataKey(str(reply["key_ref"]), key)
        except (KeyError, ValueError, WorkloadError):
            raise WorkloadError(
                "the node agent's answer is not a key", code=WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE
            ) from None
        named = names.parse_key_ref(data_key.key_ref.encode())
        if named is None or named[0] != name:
            raise WorkloadError(
                f"the node agent answered for {data_key.key_ref!r}, not {name!r}",
                code=WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE,
            )
        return data_key

    def read_key(self, key_ref: bytes) -> bytes:
        name, version = _named(key_ref)
        data_key = self._key(name, "read", version)
        if data_key.key_ref != names.format_key_ref(name, version):
            raise WorkloadError(
                f"the node agent answered {data_key.key_ref!r} for {name}@v{version}",
                code=WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE,
            )
        return data_key.key

    def write_key(self, name: str) -> DataKey:
        if not names.is_valid_key_name(name):
            raise WorkloadError(
                f"{name!r}: a key name follows {names.KEY_NAME_RULE}",
                code=WorkloadCode.WORKLOAD_INPUT_INVALID,
            )
        return self._key(name, "write", 0)

    def check(self, key_names: list[str], purpose: str = "read") -> list[str]:
        """The key_refs of ``key_names`` if the node may have them now (no key material travels)."""
        reply = self._call({"op": "check", "names": key_names, "purpose": purpose})
        return [str(ref) for ref in reply.get("keys", [])]

    def status(self) -> dict[str, Any]:
        return self._call({"op": "status"})

    def report_output(self, report: OutputReport) -> int:
        """Have the agent record a sealed output with the control plane; the ``model.output`` ledger
        sequence. ``WORKLOAD_OUTPUT_NOT_RECORDED`` if it is refused."""
        try:
            reply = self._call(report.to_request())
        except AgentRefused as refused:
            if refused.code is WorkloadCode.WORKLOAD_AGENT_UNAVAILABLE:
                raise
            raise AgentRefused(
                f"the output was not recorded: {refused.reason}: {refused.message}",
                code=WorkloadCode.WORKLOAD_OUTPUT_NOT_RECORDED,
                reason=refused.reason,
            ) from None
        sequence = reply.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
            raise WorkloadError(
                "the node agent's answer has no ledger sequence",
                code=WorkloadCode.WORKLOAD_OUTPUT_NOT_RECORDED,
            )
        return sequence


def default_key_source(environ: Mapping[str, str] | None = None) -> KeySource:
    """The node agent named by ``SOVEREIGN_AGENT_SOCKET``; ``WORKLOAD_NO_KEY_SOURCE`` if it is unset."""
    env = os.environ if environ is None else environ
    path = env.get(AGENT_SOCKET_ENV, "")
    if not path:
        raise WorkloadError(
            f"{AGENT_SOCKET_ENV} is not set and no keys= were given", code=WorkloadCode.WORKLOAD_NO_KEY_SOURCE
        )
    return AgentSocketKeySource(path)
