"""The NVML GPU evidence source: "no GPU" states, the require flag, and real H100 evidence through a fake
``pynvml`` module (monkeypatched into ``sys.modules``) that hands back the shared vectors' report and chain
bytes (read in place from ../shared/vectors/gpu), checked to verify with ``attestation.gpu``."""

from __future__ import annotations

import ctypes
import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attestation import gpu
from attestation.trust import PRODUCTION
from enclave.errors import NodeCode, NodeError
from enclave.providers.gpu_nvml import GpuState, NvmlGpuSource

# The requester nonce both hopper-nvtrust-550 and hopper-sdk-expired answer (MANIFEST.json notes).
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
NOW = datetime(2026, 12, 3, tzinfo=UTC)
CHECK_ONLY = gpu.GpuVerifyOptions(require_revocation=False, require_rims=False)


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(f"NVML error {value}")


@dataclass
class Device:
    report: bytes
    chain_pem: bytes
    arch: int = 9  # NVML_DEVICE_ARCH_HOPPER


@dataclass
class FakeNvml:
    devices: list[Device] = field(default_factory=list)
    cc_feature: int = 1
    init_error: int | None = None
    state_error: int | None = None
    report_error: int | None = None
    calls: list[str] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("pynvml")
        mod.NVMLError = NVMLError  # type: ignore[attr-defined]
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(mod, name, getattr(self, name))
        return mod

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlSystemGetConfComputeState(self) -> Any:
        if self.state_error is not None:
            raise NVMLError(self.state_error)
        return types.SimpleNamespace(environment=2, ccFeature=self.cc_feature, devToolsMode=0)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetArchitecture(self, handle: int) -> int:
        return self.devices[handle].arch

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        if self.report_error is not None:
            raise NVMLError(self.report_error)
        assert len(nonce) == 32
        report = self.devices[handle].report
        buffer = (ctypes.c_uint8 * 8192)(*report)  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE, as pynvml's struct
        return types.SimpleNamespace(attestationReport=buffer, attestationReportSize=len(report))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        pem = self.devices[handle].chain_pem
        buffer = (ctypes.c_uint8 * 5120)(*pem)  # NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE
        return types.SimpleNamespace(attestationCertChain=buffer, attestationCertChainSize=len(pem))


def _device(vectors: Path, name: str) -> Device:
    report = gpu.decode_hex_report((vectors / f"gpu/{name}.report.txt").read_text())
    return Device(report, (vectors / f"gpu/{name}.chain.pem").read_bytes())


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeNvml], FakeNvml]:
    def put(fake: FakeNvml) -> FakeNvml:
        monkeypatch.setitem(sys.modules, "pynvml", fake.module())
        return fake

    return put


def test_two_real_h100_reports_come_out_as_verifiable_evidence(
    vectors: Path, install: Callable[[FakeNvml], FakeNvml]
) -> None:
    fake = install(FakeNvml([_device(vectors, "hopper-nvtrust-550"), _device(vectors, "hopper-sdk-expired")]))
    source = NvmlGpuSource()
    evidence = source.collect(NONCE)
    assert len(evidence) == 2 and fake.calls == ["init", "shutdown"]
    assert source.last_status is not None and source.last_status.state is GpuState.READY
    drivers = []
    for item in evidence:
        assert item.declared_architecture == "HOPPER" and len(item.chain) == 5
        claims = gpu.verify_gpu(
            item, nonce=NONCE, trust=PRODUCTION, now=NOW, collateral=None, driver_rim=None,
            vbios_rim=None, options=CHECK_ONLY,
        )  # fmt: skip
        assert claims.architecture == "HOPPER" and claims.nonce == NONCE
        drivers.append(claims.driver_version)
    assert drivers == ["550.90.07", "570.124.03"]


def test_a_report_over_another_nonce_is_bad_output(
    vectors: Path, install: Callable[[FakeNvml], FakeNvml]
) -> None:
    install(FakeNvml([_device(vectors, "hopper-sdk-535")]))  # answers 27a328..., not NONCE
    with pytest.raises(NodeError) as err:
        NvmlGpuSource().collect(NONCE)
    assert err.value.code is NodeCode.PROVIDER_BAD_OUTPUT and "nonce" in err.value.message


def test_an_unparsable_report_or_empty_chain_is_bad_output(
    vectors: Path, install: Callable[[FakeNvml], FakeNvml]
) -> None:
    good = _device(vectors, "hopper-nvtrust-550")
    for device in (Device(good.report[:100], good.chain_pem), Device(good.report, b"not a chain")):
        install(FakeNvml([device]))
        with pytest.raises(NodeError) as err:
            NvmlGpuSource().collect(NONCE)
        assert err.value.code is NodeCode.PROVIDER_BAD_OUTPUT


def test_no_gpu_states_are_empty_lists_with_a_reason(
    vectors: Path, install: Callable[[FakeNvml], FakeNvml]
) -> None:
    device = _device(vectors, "hopper-nvtrust-550")
    cases = [
        (FakeNvml(init_error=12), GpuState.NVML_ABSENT),  # NVML_ERROR_LIBRARY_NOT_FOUND
        (FakeNvml(init_error=9), GpuState.NVML_ABSENT),  # NVML_ERROR_DRIVER_NOT_LOADED
        (FakeNvml([]), GpuState.NO_DEVICES),
        (FakeNvml([device], cc_feature=0), GpuState.CC_OFF),
        (FakeNvml([device], state_error=3), GpuState.CC_OFF),  # NVML_ERROR_NOT_SUPPORTED
    ]
    for fake, state in cases:
        install(fake)
        source = NvmlGpuSource()
        assert source.collect(NONCE) == []
        assert source.last_status is not None and source.last_status.state is state
        assert source.last_status.reason and source.status().state is state
        with pytest.raises(NodeError) as err:
            NvmlGpuSource(require_gpus=True).collect(NONCE)
        assert err.value.code is NodeCode.PROVIDER_UNAVAILABLE and state.value in err.value.message


def test_missing_module_is_a_state_unless_gpus_are_required() -> None:
    source = NvmlGpuSource(module="sovereign_no_such_nvml_module")
    assert source.collect(NONCE) == []
    assert source.last_status is not None and source.last_status.state is GpuState.NVML_ABSENT
    with pytest.raises(NodeError) as err:
        NvmlGpuSource(require_gpus=True, module="sovereign_no_such_nvml_module").collect(NONCE)
    assert err.value.code is NodeCode.PROVIDER_UNAVAILABLE


def test_nvml_failures_with_gpus_present_are_errors_not_no_gpu(
    vectors: Path, install: Callable[[FakeNvml], FakeNvml]
) -> None:
    device = _device(vectors, "hopper-nvtrust-550")
    for fake in (
        FakeNvml([device], report_error=999),
        FakeNvml([device], state_error=4),
        FakeNvml(init_error=4),
    ):
        install(fake)
        with pytest.raises(NodeError) as err:
            NvmlGpuSource().collect(NONCE)
        assert err.value.code is NodeCode.PROVIDER_FAILED


def test_nonce_must_be_32_bytes() -> None:
    with pytest.raises(NodeError) as err:
        NvmlGpuSource().collect(bytes(64))
    assert err.value.code is NodeCode.REPORT_DATA_INVALID


def test_real_nvidia_ml_py_without_a_driver_is_nvml_absent() -> None:
    """The pinned nvidia-ml-py, unfaked, on a machine without libnvidia-ml (this one: see NOTES.md)."""
    pynvml = importlib.import_module("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # a lent GPU machine: the no-GPU path cannot be shown here
        pynvml.nvmlShutdown()
        pytest.skip("libnvidia-ml is present on this machine")
    for name in (
        "nvmlDeviceGetConfComputeGpuAttestationReport",
        "nvmlDeviceGetConfComputeGpuCertificate",
        "nvmlSystemGetConfComputeState",
    ):
        assert callable(getattr(pynvml, name))
    source = NvmlGpuSource()
    assert source.collect(NONCE) == [] and source.last_status is not None
    assert source.last_status.state is GpuState.NVML_ABSENT
