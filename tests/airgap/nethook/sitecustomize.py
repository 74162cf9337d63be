"""Loaded (via PYTHONPATH) into every Python process of the air-gap test: logs each socket connect and
name lookup to $SOVEREIGN_NET_LOG, so the test can prove nothing tried to leave loopback."""

import os
import sys

_LOG = os.environ.get("SOVEREIGN_NET_LOG")


def _hook(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
        target = args[1] if event != "socket.getaddrinfo" else args[0]
        with open(_LOG, "a") as log:  # type: ignore[arg-type]
            log.write(f"{os.getpid()} {event} {target!r} {sys.argv[:2]!r}\n")


if _LOG:
    sys.addaudithook(_hook)
