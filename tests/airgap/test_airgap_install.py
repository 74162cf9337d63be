"""The air-gapped install, end to end: inside a network namespace with no network (``unshare -n``, as
root) the bundle is verified with the documented site steps (openssl over the signed SHA256SUMS, sha256sum,
then extract and install.sh) and installed into fresh folders with the test's own service users, which
the installer creates. Then, as the operator would: OpenBao and the control plane are started by running
the rendered units' ``ExecStart`` lines as their ``User=``, from the installed config; OpenBao is
initialised, unsealed and bootstrapped; a simulated node gets a key released. Every socket connect / name
lookup of every Python process is logged; anything but loopback fails the test. Re-installing upgrades in
place (config kept) and ``sovereign bundle rollback`` switches back. Tampered bundles are refused before
anything is installed."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from airgap.bundlelib import ROOT, Built, carry, site_steps, system_python, world_readable_folder

HERE = Path(__file__).resolve().parent
LOOPBACK = re.compile(r"^\('?(127\.0\.0\.1|::1|localhost)'?, \d+|^'/|^b?'\\x00|^'?(127\.0\.0\.1|localhost)'")
DEFAULT_FOLDERS = ("/opt/sovereign", "/etc/sovereign", "/var/lib/sovereign", "/etc/openbao", "/var/lib/openbao",
                   "/var/log/openbao")  # fmt: skip


def _require_root_and_unshare() -> None:
    if os.geteuid() != 0:
        pytest.fail("the air-gap test needs root (unshare -n creates a network namespace; useradd)")
    if shutil.which("unshare") is None or shutil.which("ip") is None or shutil.which("setpriv") is None:
        pytest.fail("the air-gap test needs util-linux 'unshare' and 'setpriv', and iproute2 'ip'")


def _system_python() -> str:
    """The services run the venv the installer makes, so it must come from a Python they can reach."""
    python = system_python()
    if python is None:
        pytest.fail(
            "the air-gap test needs a system-wide Python 3.11 (/usr/bin/python3.11) for the service users"
        )
    return python


def _extract(built: Built, dest: Path) -> Path:
    with tarfile.open(built.result.archive) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def _install(
    bundle: Path, public_key: Path, root: Path, extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    if extra:  # an install the services run from (see _system_python)
        env["SOVEREIGN_PYTHON"] = _system_python()
    cmd = [str(bundle / "install.sh"), "--public-key", str(public_key), "--prefix", str(root / "opt"),
           "--config-dir", str(root / "etc"), "--data-dir", str(root / "var"), *(extra or [])]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


@contextmanager
def _service_users_removed_after(*names: str) -> Iterator[None]:
    """The installer creates these users; they are removed again whatever happens."""
    try:
        yield
    finally:
        for name in names:
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)


def _layout(site: Path, tag: str) -> dict[str, str]:
    return {
        "prefix": str(site / "opt"), "config_dir": str(site / "etc"), "data_dir": str(site / "var"),
        "openbao_config_dir": str(site / "etc-openbao"), "openbao_data_dir": str(site / "var-openbao"),
        "openbao_log_dir": str(site / "log-openbao"), "user": f"sovt-{tag}", "openbao_user": f"baot-{tag}",
    }  # fmt: skip


def _layout_options(layout: dict[str, str]) -> list[str]:
    names = ("openbao_config_dir", "openbao_data_dir", "openbao_log_dir", "user", "openbao_user")
    return [item for name in names for item in ("--" + name.replace("_", "-"), layout[name])]


def _mode(path: Path) -> tuple[str, str, str]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, _group(st.st_gid), oct(st.st_mode & 0o777)


def _group(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def test_install_and_release_a_key_with_no_network(built_bundle: Built, tmp_path: Path) -> None:
    _require_root_and_unshare()
    carried = carry(built_bundle, tmp_path / "carried")
    tag = secrets.token_hex(3)
    with world_readable_folder() as base, _service_users_removed_after(f"sovt-{tag}", f"baot-{tag}"):
        site, work, netlog = base / "site", base / "work", base / "net.log"
        work.mkdir()
        netlog.touch()
        os.chmod(netlog, 0o666)  # test instrumentation: the services log their connects here too
        layout = _layout(site, tag)
        # The site's documented steps, verbatim, plus the test's own users and OpenBao folders.
        steps = site_steps(
            built_bundle, built_bundle.public_key, site, " " + " ".join(_layout_options(layout))
        )
        script = f"""set -eu
ip link set lo up
if ip route get 1.1.1.1 >/dev/null 2>&1; then echo "namespace has a route out" >&2; exit 90; fi
cd "{carried}"
{{
{steps}
}} > "{work}/install.out"
exec "{site}/opt/current/venv/bin/python" "{HERE}/netns_world.py" "{work}" '{json.dumps(layout)}' "{ROOT}/tests"
"""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "SOVEREIGN_", "PYTHON"))}
        env.update(PIP_NO_INDEX="1", PYTHONPATH=str(HERE / "nethook"), SOVEREIGN_NET_LOG=str(netlog))
        env["SOVEREIGN_PYTHON"] = _system_python()
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

        # The services ran as the users the installer created and the rendered units name.
        user, bao_user = pwd.getpwnam(layout["user"]), pwd.getpwnam(layout["openbao_user"])
        assert result["units"] == {"openbao": bao_user.pw_name, "control_plane": user.pw_name}
        assert result["uids"] == {"openbao": bao_user.pw_uid, "control_plane": user.pw_uid}
        assert user.pw_uid != 0 and bao_user.pw_uid != 0 and user.pw_shell.endswith(("nologin", "false"))
        assert result["db_owner"] == user.pw_uid  # the database is where the installed config says
        assert result["audit_log_owner"] == bao_user.pw_uid
        units = site / "opt" / "current" / "systemd"
        for unit in sorted(units.glob("*.service")):
            text = unit.read_text()
            assert not [
                d for d in DEFAULT_FOLDERS if re.search(r"(?<![\w.@/-])" + re.escape(d) + r"(?![\w.-])", text)
            ], unit
            start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
            assert str(site / "opt" / "current" / "venv") in start, start
        if shutil.which("systemd-analyze"):  # the rendered units parse, name existing binaries and users
            rendered = [str(u) for u in sorted(units.glob("*.service")) if "@" not in u.name]
            verify = subprocess.run(["systemd-analyze", "verify", *rendered], capture_output=True, text=True,
                                    check=False)  # fmt: skip
            assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
        assert {p.name for p in units.glob("*.service")} >= {
            "openbao.service",
            "sovereign-control-plane.service",
        }
        # Ownership: the service reads its config but cannot change it; it owns what it writes.
        etc = site / "etc"
        assert _mode(etc) == ("root", user.pw_name, "0o750")
        assert _mode(etc / "sovereign.toml") == ("root", user.pw_name, "0o640")
        assert _mode(etc / "openbao") == (user.pw_name, user.pw_name, "0o700")
        assert _mode(site / "var") == (user.pw_name, user.pw_name, "0o700")
        assert _mode(site / "etc-openbao" / "openbao.hcl") == ("root", bao_user.pw_name, "0o640")
        assert _mode(site / "var-openbao") == (bao_user.pw_name, bao_user.pw_name, "0o700")
        # Demo and test material is not installed: no demo policy, no Keycloak stand-in.
        assert sorted(p.name for p in (etc / "policies").iterdir()) == ["airgap.toml", "default.toml"]
        assert not list((site / "opt").rglob("keycloak_standin.mjs"))
        assert not list((site / "opt").rglob("dev-realm"))

        attempts = [ln for ln in netlog.read_text().splitlines() if ln.strip()]
        assert attempts, "the connect/lookup hook logged nothing: it was not loaded"
        outside = [ln for ln in attempts if not LOOPBACK.match(ln.split(" ", 2)[2])]
        assert not outside, "network access other than loopback:\n" + "\n".join(outside[:20])
        assert any("serve" in ln for ln in attempts), "the control plane's connects were not logged"
        bao_log = Path(result["bao_log"]).read_text(errors="replace")
        assert not re.search(r"dial tcp (?!127\.0\.0\.1)", bao_log), "OpenBao tried to reach the network"

        # Re-running upgrades in place: config and data are kept, the new release becomes current and
        # the one before becomes previous; rollback switches back (and forward again).
        config = etc / "sovereign.toml"
        config.write_text(config.read_text() + "# operator edit\n")
        first = (site / "opt" / "current").resolve()
        again = _install(carried / f"sovereign-{built_bundle.release_id}", built_bundle.public_key, site,
                         _layout_options(layout))  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert config.read_text().endswith("# operator edit\n")
        assert (site / "var" / "collateral" / "index.json").exists()
        assert _mode(config) == ("root", user.pw_name, "0o640")
        second = (site / "opt" / "current").resolve()
        assert second != first and (site / "opt" / "previous").resolve() == first
        cli = str(second / "venv" / "bin" / "sovereign")
        back = subprocess.run([cli, "bundle", "rollback", "--prefix", str(site / "opt"), "--json"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout) == {"ok": True, "from": str(second), "to": str(first)}
        assert (site / "opt" / "current").resolve() == first
        assert (site / "opt" / "previous").resolve() == second
        assert config.read_text().endswith("# operator edit\n")
        forward = subprocess.run([cli, "bundle", "rollback", "--prefix", str(site / "opt")],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        assert forward.returncode == 0 and (site / "opt" / "current").resolve() == second, forward.stderr


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
