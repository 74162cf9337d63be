"""Loaded (via PYTHONPATH) into a Python process of the air-gap tests: logs every file opened for
writing and every folder made to $SOVEREIGN_WRITE_LOG, so a test can prove nothing was extracted."""

import os
import sys

_LOG = os.environ.get("SOVEREIGN_WRITE_LOG")
_WATCHED = ("os.mkdir", "os.rename", "os.symlink", "os.link", "shutil.unpack_archive")


def _writing(mode: object, flags: object) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def _hook(event: str, args: tuple) -> None:
    if (event == "open" and _writing(args[1], args[2])) or event in _WATCHED:
        os.write(_FD, f"{event} {args[0]!r} {sys.argv[:2]!r}\n".encode())


if _LOG:
    _FD = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # before the hook: no recursion
    sys.addaudithook(_hook)
