"""The one shape of a refusal, shared by every package: ``Reason`` and the error root ``CodedError``.

Stdlib only, so every core may import it (``tests/unit/test_layering.py`` lets all packages import this
module, and nothing else of ``attestation``). Each package keeps its own code enum (a ``StrEnum``, so a code
is always a ``str``), its default hints and its constructor; only the shape lives here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    """Why something was refused: a stable code (from any core), what failed, what to do."""

    code: str
    message: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class CodedError(Exception):
    """Root of every coded error: a stable ``code``, a ``message`` saying what failed (written to be safe to
    show: never secrets) and a ``hint`` saying what to do. ``repr`` shows the code and message only."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        self.code = code
        self.message = message
        self.hint = hint
        super().__init__(f"{code}: {message}")

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={str(self.code)!r}, message={self.message!r})"

    def as_reason(self) -> Reason:
        return Reason(str(self.code), self.message, self.hint)

    def to_dict(self) -> dict[str, str]:
        return self.as_reason().to_dict()
