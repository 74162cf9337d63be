"""A saved simulator PKI on disk: what a dev control plane trusts and what simulated nodes sign with.

``DIR/pki.json`` (0600, in a 0700 folder): the test roots and CAs (``attestation.simulate.persist``);
``DIR/trust.json``: the simulation trust profile pinning them (``sovereign serve --trust DIR/trust.json``);
``DIR/collateral``: a collateral store with their CRLs, TCB info and QE identity
(``sovereign serve --collateral DIR/collateral``); ``DIR/gpu-pki.json``: simulated NVIDIA GPU roots and CAs
(nodes' ``--sim-gpus N``), pinned in trust.json, their RIMs, OCSP responses and CRLs imported into the
same collateral store. Nodes use it with ``--provider simulated-snp|tdx --sim-pki DIR``. The production trust profile refuses these roots (TEST_ROOT_IN_PRODUCTION).
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from attestation.collateral import CollateralItem, ItemKind
from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from attestation.simulate.gpu_persist import dump_gpu_simulator, gpu_collateral, pin_gpu_roots
from attestation.simulate.persist import dump_pki
from attestation.store import CollateralStore
from sovereign.cli._common import dump_trust

PKI_FILE = "pki.json"
GPU_PKI_FILE = "gpu-pki.json"
_KINDS = {
    "certs": ItemKind.CERTIFICATE,
    "crls": ItemKind.CRL,
    "tcb_infos": ItemKind.TDX_TCB_INFO,
    "qe_identities": ItemKind.TDX_QE_IDENTITY,
}


def save_sim_pki(pki: SimulatedPki, directory: Path, now: datetime) -> dict[str, str]:
    """Write pki.json, trust.json and the collateral store into ``directory``; their paths."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    pki.mint_snp_report()  # makes the ASKs whose CRLs and certificates go in the store
    pki.mint_snp_report(signing_key="vlek")
    target = directory / PKI_FILE
    _write_private(target, dump_pki(pki))
    gpus = GpuSimulator(now)
    _write_private(directory / GPU_PKI_FILE, dump_gpu_simulator(gpus))
    trust = directory / "trust.json"
    pinned = pin_gpu_roots(pki.trust_store(), gpus)
    trust.write_text(dump_trust(pinned) + "\n")
    items = [
        (CollateralItem(_KINDS[kind], data), "simulator")
        for group in (pki.snp_collateral_items(), pki.tdx_collateral_items())
        for kind, values in group.items()
        for data in values
    ]
    items += gpu_collateral(gpus).items()
    store = directory / "collateral"
    if (store / "index.json").exists():
        # A new PKI: the store of the one saved here before holds collateral for roots no longer trusted,
        # and its RIMs would conflict with the new simulator's (same versions, other signer).
        shutil.rmtree(store)
    CollateralStore(store).import_items(items, trust=pinned, now=now)
    return {"pki": str(target), "trust": str(trust), "collateral": str(directory / "collateral")}


def _write_private(target: Path, data: bytes) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)
