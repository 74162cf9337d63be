"""The air-gapped install, end to end: inside a network namespace with no network (``unshare -n``, as
root) the bundle is verified with the documented site steps (openssl over the signed SHA256SUMS, sha256sum, then
extract and install.sh) and installed into fresh folders, OpenBao starts from the installed wheel,
is bootstrapped, the installed control plane serves, and a simulated node gets a key released. Every
socket connect / name lookup of every Python process is logged; anything but loopback fails the test.
Tampered bundles are refused before anything is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from airgap.bundlelib import ROOT, Built, carry, site_steps

HERE = Path(__file__).resolve().parent
LOOPBACK = re.compile(r"^\('?(127\.0\.0\.1|::1|localhost)'?, \d+|^'/|^b?'\\x00|^'?(127\.0\.0\.1|localhost)'")


def _require_root_and_unshare() -> None:
    if os.geteuid() != 0:
        pytest.fail("the air-gap test needs root (unshare -n creates a network namespace)")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("the air-gap test needs util-linux 'unshare' and iproute2 'ip'")


def _extract(built: Built, dest: Path) -> Path:
    with tarfile.open(built.result.archive) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def _install(bundle: Path, public_key: Path, root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    cmd = [str(bundle / "install.sh"), "--public-key", str(public_key), "--prefix", str(root / "opt"),
           "--config-dir", str(root / "etc"), "--data-dir", str(root / "var")]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def test_install_and_release_a_key_with_no_network(built_bundle: Built, tmp_path: Path) -> None:
    _require_root_and_unshare()
    carried = carry(built_bundle, tmp_path / "carried")
    site, work, netlog = tmp_path / "site", tmp_path / "work", tmp_path / "net.log"
    work.mkdir()
    netlog.touch()
    # The site's documented steps, verbatim: verify with openssl + sha256sum, extract, install.sh.
    steps = site_steps(built_bundle, built_bundle.public_key, site)
    script = f"""set -eu
ip link set lo up
if ip route get 1.1.1.1 >/dev/null 2>&1; then echo "namespace has a route out" >&2; exit 90; fi
cd "{carried}"
{{
{steps}
}} > "{work}/install.out"
exec "{site}/opt/current/venv/bin/python" "{HERE}/netns_world.py" "{work}" "{site}/opt" "{site}/var" "{ROOT}/tests"
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SOVEREIGN_", "PYTHON"))}
    env.update(PIP_NO_INDEX="1", PYTHONPATH=str(HERE / "nethook"), SOVEREIGN_NET_LOG=str(netlog))
    run = subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, (
        f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-5000:]}"
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["state"] == "NODE_STATE_ATTESTED"
    assert result["key_len"] == 32 and result["audit_sequence"] >= 1
    assert result["attestation_module"].startswith(str(site / "opt"))  # the installed code ran
    assert result["imported"]["ok"] and result["imported"]["added"]
    installed = (work / "install.out").read_text()
    assert "Signature Verified Successfully" in installed and "Next steps" in installed
    assert f"{built_bundle.result.archive.name}: OK" in installed

    attempts = [ln for ln in netlog.read_text().splitlines() if ln.strip()]
    assert attempts, "the connect/lookup hook logged nothing: it was not loaded"
    outside = [ln for ln in attempts if not LOOPBACK.match(ln.split(" ", 2)[2])]
    assert not outside, "network access other than loopback:\n" + "\n".join(outside[:20])
    bao_log = Path(result["bao_log"]).read_text(errors="replace")
    assert not re.search(r"dial tcp (?!127\.0\.0\.1)", bao_log), "OpenBao tried to reach the network"

    # Re-running upgrades in place: config and data are kept.
    config = site / "etc" / "sovereign.toml"
    config.write_text(config.read_text() + "# operator edit\n")
    again = _install(carried / f"sovereign-{built_bundle.release_id}", built_bundle.public_key, site)
    assert again.returncode == 0, again.stderr
    assert config.read_text().endswith("# operator edit\n")
    assert (site / "var" / "collateral" / "index.json").exists()
    assert oct(config.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("tamper", ["wheel", "manifest", "signer", "extra-file"])
def test_tampered_bundle_is_refused_before_anything_is_installed(
    built_bundle: Built, tmp_path: Path, tamper: str
) -> None:
    bundle = _extract(built_bundle, tmp_path / "x")
    key = built_bundle.public_key
    if tamper == "wheel":
        wheel = next((bundle / "wheels").glob("rfc8785-*.whl"))
        wheel.write_bytes(wheel.read_bytes() + b"\0")
    elif tamper == "manifest":
        manifest = bundle / "manifest.json"
        text = manifest.read_text()
        flipped = ("true", "false") if '"dirty": true' in text else ("false", "true")
        changed = text.replace(f'"dirty": {flipped[0]}', f'"dirty": {flipped[1]}')
        assert changed != text, "the manifest has no 'dirty' field to tamper with"
        manifest.write_text(changed)
    elif tamper == "signer":
        key = built_bundle.other_public_key
    else:
        (bundle / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    run = _install(bundle, key, tmp_path / "site")
    assert run.returncode != 0
    expected = {"wheel": "BUNDLE_FILE_MISMATCH", "manifest": "BUNDLE_SIGNATURE_INVALID",
                "signer": "BUNDLE_SIGNATURE_INVALID", "extra-file": "BUNDLE_FILE_UNLISTED"}  # fmt: skip
    assert expected[tamper] in run.stderr, run.stderr
    assert not (tmp_path / "site").exists(), "something was written before the bundle was verified"


def test_build_is_reproducible(built_bundle: Built, tmp_path: Path) -> None:
    """Staging again from the same tree gives the same manifest (wheel timestamps normalised)."""
    from sovereign.bundle import keys
    from sovereign.bundle.build import BuildOptions, manifest_bytes, stage

    key, _ = keys.generate(tmp_path / "k", "k")
    options = BuildOptions(ROOT, tmp_path / "o", keys.load_signing_key(key), ROOT / "var" / "bundle-cache",
                           from_worktree=True)  # fmt: skip
    _, first, _ = stage(options, tmp_path / "a")
    _, second, _ = stage(options, tmp_path / "b")
    assert manifest_bytes(first) == manifest_bytes(second)
    assert first["files"] == built_bundle.result.manifest["files"] or first["dirty"]
