"""Process-wide protections every ``sovereign`` command gets before it runs."""

from __future__ import annotations

import resource


def refuse_core_dumps() -> None:
    """Keys pass through these processes in the clear: released data keys in ``serve`` (unwrapped by OpenBao,
    wrapped again for the node), node keys and data keys in the node agent and ``node`` commands, data keys in
    ``key``/``dataset``. A core dump on a crash would write them to disk; the soak found them in one of
    serve's (``serve-abort``). The soft limit goes to 0; the hard one stays for a debugging operator."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
