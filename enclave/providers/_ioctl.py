"""The one place that opens a TEE guest device and issues an ioctl on it."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from enclave.errors import NodeCode, NodeError

#: ``ioctl(request, arg)``: issue ``request`` with the mutable argument buffer ``arg``; the
#: kernel's writes to ``arg`` are visible afterwards. Raises OSError as the syscall fails.
IoctlFn = Callable[[int, bytearray], None]

_IOC_WRITE = 1
_IOC_READ = 2


def iowr(kind: str, nr: int, size: int) -> int:
    """Linux ``_IOWR(kind, nr, size)`` (asm-generic layout, as on x86)."""
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (ord(kind) << 8) | nr


def device_ioctl(device: Path) -> IoctlFn:
    """An ``IoctlFn`` that opens ``device`` for each call. Missing or forbidden devices raise
    PROVIDER_UNAVAILABLE; the ioctl's own failures propagate as OSError for the caller to decode."""

    def call(request: int, arg: bytearray) -> None:
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NodeError(f"{device} does not exist", code=NodeCode.PROVIDER_UNAVAILABLE) from exc
        except PermissionError as exc:
            raise NodeError(
                f"permission denied opening {device}",
                code=NodeCode.PROVIDER_UNAVAILABLE,
                hint=f"run the node agent as root or grant it read-write access to {device}",
            ) from exc
        except OSError as exc:
            raise NodeError(
                f"cannot open {device}: {errno_name(exc)}", code=NodeCode.PROVIDER_UNAVAILABLE
            ) from exc
        try:
            fcntl.ioctl(fd, request, arg, True)
        finally:
            os.close(fd)

    return call


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))
