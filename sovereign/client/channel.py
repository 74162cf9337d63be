"""The operator endpoint's channel: TLS with the control plane's CA pinned, or plaintext only when asked
for (a server run with ``--insecure-dev``, or a ``unix:`` socket)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

Metadata = Sequence[tuple[str, str]]


def operator_channel(target: str, *, ca: bytes | None, insecure: bool = False) -> grpc.Channel:
    """A channel to ``target`` (HOST:PORT or unix:PATH); ``ca`` None trusts the system roots."""
    if insecure or target.startswith("unix:"):
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca))
