"""Length-prefixed big-endian encoding helpers shared by the envelope formats."""

from __future__ import annotations

from collections.abc import Callable

from kms.envelope.errors import EnvelopeError


def prefixed(value: bytes, width: int, fail: Callable[[str], EnvelopeError]) -> bytes:
    """``len(value)`` as a ``width``-byte big-endian integer, then ``value``."""
    if len(value) >= 1 << (8 * width):
        raise fail(f"field of {len(value)} bytes does not fit a {width}-byte length prefix")
    return len(value).to_bytes(width, "big") + value


class Reader:
    """A cursor over bytes that raises the caller's typed error instead of IndexError."""

    def __init__(self, data: bytes, fail: Callable[[str], EnvelopeError]) -> None:
        self._data = data
        self._pos = 0
        self._fail = fail

    def take(self, n: int, what: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise self._fail(
                f"{what}: need {n} bytes at offset {self._pos}, only {len(self._data) - self._pos} left"
            )
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def uint(self, width: int, what: str) -> int:
        return int.from_bytes(self.take(width, what), "big")

    def prefixed(self, width: int, what: str) -> bytes:
        return self.take(self.uint(width, f"{what} length"), what)

    def rest(self) -> bytes:
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out
