"""What the soak's clients saw, in the form the invariant checker reads: every key a client received
(with the request id it sent) and every refusal (with the code it was given), plus the windows in which
a fault could leave an OpenBao decrypt without its ledger entry.

Records hold public data only: the plaintext of a received key is never part of a record (the driver
keeps the keys in memory for the key-material scan and nowhere else).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Received:
    """A key a client received and opened: the grant it was told about (``audit_sequence``)."""

    time: datetime
    node_id: str
    request_id: str  # hex of the 16 bytes the client signed into its request
    key_name: str
    key_version: int
    purpose: str
    audit_sequence: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time": self.time.isoformat()}


@dataclass(frozen=True)
class Refusal:
    """A release a client asked for and did not get.

    ``coded``: the server answered with a reason code of its own (a decision); False for transport
    failures and timeouts, where the server may still have granted after the client gave up.
    """

    time: datetime
    node_id: str
    request_id: str
    key_name: str
    code: str
    coded: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time": self.time.isoformat()}


@dataclass(frozen=True)
class Window:
    """A span in which the control plane could decrypt a key in OpenBao and then be unable to record
    anything about it (the process was SIGKILLed or aborted, OpenBao died before its answer arrived). The
    key never left the process: a reply is sent only after the commit. A commit that merely fails is no
    such case: the server records a denial for the decrypt (``kms.usecases.unrecorded``)."""

    kind: str
    start: datetime
    end: datetime

    def holds(self, when: datetime) -> bool:
        return self.start <= when <= self.end

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass
class ClientHistory:
    received: list[Received]
    refusals: list[Refusal]
    orphan_windows: list[Window]
