"""NVIDIA GPU evidence through NVML's confidential-computing attestation calls (``nvidia-ml-py``).

For each GPU: ``nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)`` (the SPDM GET_MEASUREMENTS
request || MEASUREMENTS response, signed by the GPU) and ``nvmlDeviceGetConfComputeGpuCertificate(handle)``
(the device chain as PEM, leaf first). ``nvmlSystemGetConfComputeState()`` says whether confidential
computing is on.

A node without GPUs is normal, so "no GPU" is a state, not an error: the NVML library or driver is absent,
no device is present, or confidential computing is off. ``collect`` then returns an empty list and
``status`` says which and why. Only a source built with ``require_gpus=True`` turns that state into a coded
``PROVIDER_UNAVAILABLE`` error. Once GPUs are present in CC mode, any failure to get their evidence is an
error (``PROVIDER_FAILED``): quietly sending no GPU evidence would make a GPU node look like a CPU-only one.

The output is checked, not verified: each report must parse, answer the nonce asked for and come with a
chain; verification is the server's (``attestation.gpu``).
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType
from typing import Any

from attestation.errors import AttestationError
from attestation.gpu.evidence import GpuEvidence, from_pem
from attestation.gpu.spdm import NONCE_SIZE, parse_report
from enclave.errors import NodeCode, NodeError

MAX_GPUS = 64
# NVML return codes (nvml.h) meaning "there is no usable NVIDIA driver here", not "something broke".
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_CC_FEATURE_ENABLED = 1  # NVML_CC_SYSTEM_FEATURE_ENABLED
_DEVTOOLS_ON = 1  # NVML_CC_SYSTEM_DEVTOOLS_MODE_ON
_ENVIRONMENTS = {0: "unavailable", 1: "simulation", 2: "production"}  # NVML_CC_SYSTEM_ENVIRONMENT_*
_ARCHITECTURES = {9: "HOPPER", 10: "BLACKWELL"}  # NVML_DEVICE_ARCH_*; others have no CC attestation


class GpuState(StrEnum):
    READY = "ready"  # GPUs present with confidential computing on
    NVML_ABSENT = "nvml-absent"  # nvidia-ml-py, libnvidia-ml or the kernel driver is not there
    NO_DEVICES = "no-devices"  # NVML runs but sees no GPU
    CC_OFF = "cc-off"  # GPUs present, confidential computing off or not supported


@dataclass(frozen=True)
class GpuStatus:
    state: GpuState
    reason: str
    devices: int = 0
    environment: str | None = None  # production / simulation / unavailable, as NVML reports it
    dev_tools: bool | None = None  # CC dev-tools (debug) mode

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "devices": self.devices,
            "environment": self.environment,
            "dev_tools": self.dev_tools,
        }


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _failed(message: str) -> NodeError:
    return NodeError(
        message,
        code=NodeCode.PROVIDER_FAILED,
        hint="check the NVIDIA driver (nvidia-smi conf-compute -q) and that the GPUs are in CC mode; retry",
    )


def _bytes(buffer: Any, size: Any, limit: int, what: str) -> bytes:
    if not isinstance(size, int) or not 0 < size <= limit:
        raise NodeError(f"NVML returned a {what} of size {size!r}", code=NodeCode.PROVIDER_BAD_OUTPUT)
    return bytes(buffer[:size])


class NvmlGpuSource:
    """Every GPU's evidence over one 32-byte nonce, through NVML (loaded only when asked)."""

    name = "nvml"

    def __init__(self, *, require_gpus: bool = False, module: str = "pynvml") -> None:
        self.require_gpus = require_gpus
        self._module = module
        self.last_status: GpuStatus | None = None

    def _load(self) -> ModuleType | None:
        try:
            return importlib.import_module(self._module)
        except ImportError:
            return None

    def status(self) -> GpuStatus:
        """What NVML says about this machine's GPUs, without collecting evidence."""
        nvml = self._load()
        if nvml is None:
            return self._remember(
                GpuStatus(GpuState.NVML_ABSENT, f"the {self._module} module is not installed")
            )
        try:
            started = self._init(nvml)
            if isinstance(started, GpuStatus):
                return self._remember(started)
            try:
                return self._remember(self._probe(nvml))
            finally:
                self._shutdown(nvml)
        except NodeError:
            raise
        except Exception as exc:  # NVML errors are one class per code; anything else is a failure too
            raise _failed(f"NVML failed: {type(exc).__name__}: {exc}") from None

    def collect(self, nonce: bytes) -> list[GpuEvidence]:
        """Each GPU's report over ``nonce`` and its device chain; [] when there is no GPU (see ``status``)."""
        if not isinstance(nonce, bytes | bytearray) or len(nonce) != NONCE_SIZE:
            raise NodeError(f"the GPU nonce must be {NONCE_SIZE} bytes", code=NodeCode.REPORT_DATA_INVALID)
        nonce = bytes(nonce)
        nvml = self._load()
        if nvml is None:
            return self._none(GpuStatus(GpuState.NVML_ABSENT, f"the {self._module} module is not installed"))
        try:
            started = self._init(nvml)
            if isinstance(started, GpuStatus):
                return self._none(started)
            try:
                status = self._remember(self._probe(nvml))
                if status.state is not GpuState.READY:
                    return self._none(status)
                return [self._one(nvml, i, nonce) for i in range(status.devices)]
            finally:
                self._shutdown(nvml)
        except NodeError:
            raise
        except Exception as exc:
            raise _failed(f"NVML failed while collecting GPU evidence: {type(exc).__name__}: {exc}") from None

    # -- steps -----------------------------------------------------------------------------------
    def _remember(self, status: GpuStatus) -> GpuStatus:
        self.last_status = status
        return status

    def _none(self, status: GpuStatus) -> list[GpuEvidence]:
        self._remember(status)
        if self.require_gpus:
            raise NodeError(
                f"GPUs are required, but {status.reason} ({status.state.value})",
                code=NodeCode.PROVIDER_UNAVAILABLE,
                hint="run on a node with Hopper/Blackwell GPUs in confidential-computing mode "
                "(nvidia-smi conf-compute -srs 1), or do not require GPUs",
            )
        return []

    @staticmethod
    def _init(nvml: ModuleType) -> GpuStatus | None:
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            code = _code(exc)
            if code in (_NVML_ERROR_LIBRARY_NOT_FOUND, _NVML_ERROR_DRIVER_NOT_LOADED):
                return GpuStatus(GpuState.NVML_ABSENT, f"NVML did not start: {exc}")
            raise _failed(f"nvmlInit failed: {exc}") from None
        return None

    @staticmethod
    def _shutdown(nvml: ModuleType) -> None:
        # Nothing is left to release if shutdown fails; the evidence (or the error) already stands.
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()

    @staticmethod
    def _probe(nvml: ModuleType) -> GpuStatus:
        count = nvml.nvmlDeviceGetCount()
        if not isinstance(count, int) or count < 0 or count > MAX_GPUS:
            raise NodeError(f"NVML reports {count!r} GPUs", code=NodeCode.PROVIDER_BAD_OUTPUT)
        if count == 0:
            return GpuStatus(GpuState.NO_DEVICES, "NVML sees no GPU")
        try:
            state = nvml.nvmlSystemGetConfComputeState()
        except nvml.NVMLError as exc:
            if _code(exc) in (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_FUNCTION_NOT_FOUND):
                return GpuStatus(
                    GpuState.CC_OFF, f"confidential computing is not supported here: {exc}", devices=count
                )
            raise _failed(f"nvmlSystemGetConfComputeState failed: {exc}") from None
        environment = _ENVIRONMENTS.get(state.environment, f"unknown:{state.environment}")
        dev_tools = state.devToolsMode == _DEVTOOLS_ON
        if state.ccFeature != _CC_FEATURE_ENABLED:
            return GpuStatus(
                GpuState.CC_OFF,
                f"confidential computing is off on this machine's {count} GPU(s)",
                devices=count,
                environment=environment,
                dev_tools=dev_tools,
            )
        return GpuStatus(
            GpuState.READY,
            f"{count} GPU(s) in confidential-computing mode",
            devices=count,
            environment=environment,
            dev_tools=dev_tools,
        )

    @staticmethod
    def _one(nvml: ModuleType, index: int, nonce: bytes) -> GpuEvidence:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        try:
            architecture: str | None = _ARCHITECTURES.get(nvml.nvmlDeviceGetArchitecture(handle))
        except nvml.NVMLError:
            architecture = None  # only a label; the verifier reads the architecture from the leaf
        report_out = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
        report = _bytes(
            report_out.attestationReport,
            report_out.attestationReportSize,
            len(report_out.attestationReport),
            f"GPU {index} attestation report",
        )
        certs_out = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
        chain_pem = _bytes(
            certs_out.attestationCertChain,
            certs_out.attestationCertChainSize,
            len(certs_out.attestationCertChain),
            f"GPU {index} certificate chain",
        )
        try:
            evidence = from_pem(report, chain_pem, architecture)
            answered = parse_report(report).request.nonce
        except AttestationError as exc:
            raise NodeError(
                f"GPU {index} returned evidence that does not parse: {exc.code}: {exc.message}",
                code=NodeCode.PROVIDER_BAD_OUTPUT,
            ) from None
        if not evidence.chain:
            raise NodeError(f"GPU {index} returned no certificate", code=NodeCode.PROVIDER_BAD_OUTPUT)
        if not hmac.compare_digest(answered, nonce):
            raise NodeError(
                f"GPU {index}'s report answers another nonce than the one asked for",
                code=NodeCode.PROVIDER_BAD_OUTPUT,
            )
        return evidence
