"""The node agent's named choices, shared by ``enclave.config`` (which validates settings) and the CLI's
argument declarations (``sovereign.cli.commands.node``, which must not import the agent's client or
providers). Standard library only: nothing here may pull in gRPC or a provider."""

from __future__ import annotations

PROVIDER_NAMES = ("configfs-tsm", "sev-guest", "tdx-guest", "simulated-snp", "simulated-tdx")
PROVIDER_CHOICES = ("auto", *PROVIDER_NAMES)
GPU_CHOICES = ("none", "nvml", "simulated")
