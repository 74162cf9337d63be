"""Choose an evidence provider: by name, or by probing what this node offers.

Automatic order: configfs-tsm (when it has a provider registered), then /dev/sev-guest.
/dev/tdx_guest is reported but never chosen automatically: it yields only TDREPORTs, which no
remote verifier can check (see ``tdxguest``). Simulated providers are never chosen automatically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from attestation.claims import Tee
from enclave.choices import PROVIDER_NAMES
from enclave.errors import NodeCode, NodeError
from enclave.providers import configfs, sevguest, tdxguest
from enclave.providers.base import EvidenceProvider
from enclave.providers.configfs import ConfigfsTsmProvider, TsmFs
from enclave.providers.sevguest import SevGuestProvider
from enclave.providers.simulated import Minter, SimulatedProvider
from enclave.providers.tdxguest import TdxGuestProvider

DEFAULT_DEVICES: Mapping[str, Path] = {
    "sev-guest": sevguest.DEFAULT_DEVICE,
    "tdx-guest": tdxguest.DEFAULT_DEVICE,
}
_SIMULATED = {"simulated-snp": Tee.SNP, "simulated-tdx": Tee.TDX}


def detect_provider(
    *,
    prefer: str | None = None,
    root: Path | str = configfs.DEFAULT_ROOT,
    devices: Mapping[str, Path | str] = DEFAULT_DEVICES,
    minters: Mapping[str, Minter] | None = None,
    fs: TsmFs | None = None,
) -> EvidenceProvider:
    """The provider named by ``prefer``, or the first one that works on this node.

    ``minters`` maps ``simulated-snp`` / ``simulated-tdx`` to a minter (see ``simulated``).
    Raises PROVIDER_UNSUPPORTED for an unknown name and PROVIDER_UNAVAILABLE, listing what was
    probed, when nothing is available.
    """
    root = Path(root)
    sev_device = Path(devices.get("sev-guest", sevguest.DEFAULT_DEVICE))
    tdx_device = Path(devices.get("tdx-guest", tdxguest.DEFAULT_DEVICE))
    if prefer is not None:
        return _named(
            prefer, root=root, sev_device=sev_device, tdx_device=tdx_device, minters=minters or {}, fs=fs
        )

    probed: list[str] = []
    tsm = ConfigfsTsmProvider(root, fs=fs)
    if tsm.present():
        try:
            tsm.probe()
            return tsm
        except NodeError as exc:
            probed.append(f"configfs-tsm: {exc.message}")
    else:
        probed.append(f"configfs-tsm: {root} does not exist")
    if sev_device.exists():
        return SevGuestProvider(sev_device)
    probed.append(f"sev-guest: {sev_device} does not exist")
    if tdx_device.exists():
        probed.append(
            f"tdx-guest: {tdx_device} exists but gives only TDREPORTs; TDX quotes need configfs-tsm"
        )
    else:
        probed.append(f"tdx-guest: {tdx_device} does not exist")
    raise NodeError(
        "no TEE evidence provider is available; probed: " + "; ".join(probed),
        code=NodeCode.PROVIDER_UNAVAILABLE,
    )


def _named(
    name: str,
    *,
    root: Path,
    sev_device: Path,
    tdx_device: Path,
    minters: Mapping[str, Minter],
    fs: TsmFs | None,
) -> EvidenceProvider:
    if name == "configfs-tsm":
        return ConfigfsTsmProvider(root, fs=fs)
    if name == "sev-guest":
        return SevGuestProvider(sev_device)
    if name == "tdx-guest":
        return TdxGuestProvider(tdx_device, tsm_root=root)
    if name in _SIMULATED:
        minter = minters.get(name)
        if minter is None:
            raise NodeError(
                f"the {name} provider needs a minter from the simulator",
                code=NodeCode.PROVIDER_UNAVAILABLE,
                hint=f"pass minters={{{name!r}: ...}} built from an attestation.simulate PKI",
            )
        return SimulatedProvider(minter, tee=_SIMULATED[name], name=name)
    raise NodeError(
        f"unknown evidence provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}",
        code=NodeCode.PROVIDER_UNSUPPORTED,
    )
