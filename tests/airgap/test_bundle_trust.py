"""A bundle is verified by code the site already trusts, never by code inside the bundle.

The documented site steps (the block in docs/airgap.md, run verbatim with this test's paths) check the
signed SHA256SUMS with openssl and the tarball with sha256sum before anything is extracted, so a tarball
whose install.py or install.sh was edited in transit is refused before any of its code runs. The
installed ``sovereign bundle install|verify`` and the installer's ``--bundle X.tar.gz`` make the same
check before extracting. A missing key file is a coded error, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from airgap.bundlelib import (
    ROOT,
    Built,
    carry,
    documented_steps,
    plant_marker_in_install_py,
    plant_marker_in_install_sh,
    repack,
    site_steps,
)

HERE = Path(__file__).resolve().parent
INSTALLER = ROOT / "sovereign" / "bundle" / "installer.py"


def _sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "SOVEREIGN_"))}
    return subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, text=True, env=env, check=False)


def _cli(*args: str | Path, write_log: Path) -> subprocess.CompletedProcess[str]:
    """The installed-side CLI in a subprocess, with every file write and mkdir logged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "SOVEREIGN_"))}
    env.update(PYTHONPATH=str(HERE / "writehook"), SOVEREIGN_WRITE_LOG=str(write_log))
    return subprocess.run(
        [sys.executable, "-m", "sovereign", "bundle", *map(str, args)],
        capture_output=True, text=True, env=env, check=False, cwd=ROOT,
    )  # fmt: skip


def _installer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The stdlib installer as a site runs a copy it already verified: host python3, isolated mode."""
    return subprocess.run(
        ["python3", "-I", str(INSTALLER), *map(str, args)], capture_output=True, text=True, check=False
    )


def test_readme_and_airgap_doc_give_the_same_steps_and_they_verify_before_extracting() -> None:
    steps = documented_steps(ROOT / "docs" / "airgap.md")
    assert documented_steps(ROOT / "README.md") == steps
    order = [
        steps.index(s) for s in ("openssl pkeyutl -verify", "sha256sum --check", "tar xzf", "install.sh")
    ]
    assert order == sorted(order), "the documented steps must verify, then extract, then install"
    # one chain: a failing check stops everything after it
    assert steps.rstrip().count("&&\n") == 3 and not any(
        ln.rstrip().endswith(";") for ln in steps.splitlines()
    )


EDITS: dict[str, Callable[[Path], Callable[[Path], None]]] = {
    "install.py": plant_marker_in_install_py,
    "install.sh": plant_marker_in_install_sh,
}


@pytest.mark.parametrize("edited", sorted(EDITS))
def test_documented_steps_refuse_an_edited_installer_before_it_runs(
    built_bundle: Built, tmp_path: Path, edited: str
) -> None:
    marker = tmp_path / "payload-ran"
    carried = repack(built_bundle, tmp_path / "carried", EDITS[edited](marker))
    tarball = carried / built_bundle.result.archive.name

    # The edit is live: the tampered installer, if run, writes the marker.
    probe = tmp_path / "probe"
    with tarfile.open(tarball) as tar:
        tar.extractall(probe, filter="data")
    (top,) = probe.iterdir()
    ran = _sh(f"'{top}/install.sh' --public-key '{built_bundle.public_key}' --verify-only", probe)
    assert marker.exists(), f"the planted payload did not run when executed directly: {ran.stderr}"
    marker.unlink()

    site = tmp_path / "site"
    run = _sh(site_steps(built_bundle, built_bundle.public_key, site), carried)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "Signature Verified Successfully" in run.stdout  # the sums themselves are genuine
    assert f"{tarball.name}: FAILED" in run.stdout, run.stdout + run.stderr
    assert not marker.exists(), f"code from the edited {edited} ran before the bundle was verified"
    assert not (carried / f"sovereign-{built_bundle.release_id}").exists(), "extracted before verifying"
    assert not site.exists()


def test_documented_steps_refuse_sums_signed_by_another_key(built_bundle: Built, tmp_path: Path) -> None:
    carried = carry(built_bundle, tmp_path / "carried")
    run = _sh(site_steps(built_bundle, built_bundle.other_public_key, tmp_path / "site"), carried)
    assert run.returncode != 0
    assert "Signature Verification Failure" in run.stdout + run.stderr
    assert sorted(p.name for p in carried.iterdir()) == sorted(p.name for p in built_bundle.result.published)


def test_bundle_install_refuses_a_tampered_tarball_before_extracting(
    built_bundle: Built, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    carried = repack(built_bundle, tmp_path / "carried", plant_marker_in_install_py(marker))
    tarball = carried / built_bundle.result.archive.name
    site = tmp_path / "site"
    for action in ("install", "verify"):
        log = tmp_path / f"{action}-writes.log"
        extra = ["--prefix", site / "opt", "--config-dir", site / "etc", "--data-dir", site / "var"]
        args = [action, tarball, "--public-key", built_bundle.public_key, "--json"]
        run = _cli(*args, *(extra if action == "install" else []), write_log=log)
        assert run.returncode == 1, run.stdout + run.stderr
        assert json.loads(run.stdout)["error"]["code"] == "BUNDLE_ARCHIVE_MISMATCH", run.stdout
        assert "Traceback" not in run.stderr
        writes = log.read_text()
        assert f"sovereign-{built_bundle.release_id}" not in writes, (
            f"{action} extracted before verifying:\n{writes}"
        )
        assert "sovereign-bundle-" not in writes, f"{action} made an extraction folder:\n{writes}"
    assert not marker.exists() and not site.exists()


def test_bundle_verify_checks_the_signed_sums_beside_the_tarball(built_bundle: Built, tmp_path: Path) -> None:
    carried = carry(built_bundle, tmp_path / "carried")
    tarball = carried / built_bundle.result.archive.name
    good = _cli(
        "verify", tarball, "--public-key", built_bundle.public_key, "--json", write_log=tmp_path / "w1"
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["release_id"] == built_bundle.release_id

    other = _cli(
        "verify", tarball, "--public-key", built_bundle.other_public_key, "--json", write_log=tmp_path / "w2"
    )
    assert json.loads(other.stdout)["error"]["code"] == "BUNDLE_SIGNATURE_INVALID"

    sums = built_bundle.result.sums.name
    (carried / sums).write_text((carried / sums).read_text().replace(tarball.name, "renamed.tar.gz"))
    forged = _cli(
        "verify", tarball, "--public-key", built_bundle.public_key, "--json", write_log=tmp_path / "w3"
    )
    assert json.loads(forged.stdout)["error"]["code"] == "BUNDLE_SIGNATURE_INVALID"

    (carried / sums).unlink()
    missing = _cli(
        "verify", tarball, "--public-key", built_bundle.public_key, "--json", write_log=tmp_path / "w4"
    )
    assert json.loads(missing.stdout)["error"]["code"] == "BUNDLE_FILE_MISSING"
    for log in ("w2", "w3", "w4"):
        assert "sovereign-bundle-" not in (tmp_path / log).read_text()


def test_installer_checks_a_tarball_before_extracting(built_bundle: Built, tmp_path: Path) -> None:
    good = carry(built_bundle, tmp_path / "good") / built_bundle.result.archive.name
    ok = _installer("--bundle", good, "--public-key", built_bundle.public_key, "--verify-only")
    assert ok.returncode == 0 and f"release {built_bundle.release_id}" in ok.stdout, ok.stderr

    marker = tmp_path / "payload-ran"
    bad = repack(built_bundle, tmp_path / "bad", plant_marker_in_install_py(marker)) / good.name
    site = tmp_path / "site"
    refused = _installer("--bundle", bad, "--public-key", built_bundle.public_key, "--prefix", site / "opt",
                         "--config-dir", site / "etc", "--data-dir", site / "var")  # fmt: skip
    assert refused.returncode == 1
    assert "BUNDLE_ARCHIVE_MISMATCH" in refused.stderr and "nothing was extracted" in refused.stderr
    assert not marker.exists() and not site.exists()


def test_a_missing_key_file_is_a_coded_error_not_a_traceback(built_bundle: Built, tmp_path: Path) -> None:
    carried = carry(built_bundle, tmp_path / "carried")
    tarball = carried / built_bundle.result.archive.name
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (folder,) = (tmp_path / "x").iterdir()
    missing = tmp_path / "no-such-release.pub.pem"
    runs = [
        _sh(f"'{folder}/install.sh' --public-key '{missing}' --verify-only", tmp_path),
        _sh(f"'{folder}/install.sh' --public-key '{missing}' --prefix '{tmp_path}/site'", tmp_path),
        _installer("--bundle", tarball, "--public-key", missing, "--verify-only"),
        _cli("verify", tarball, "--public-key", missing, write_log=tmp_path / "w1"),
        _cli("verify", folder, "--public-key", missing, write_log=tmp_path / "w2"),
        _cli(
            "install",
            tarball,
            "--public-key",
            missing,
            "--prefix",
            tmp_path / "site",
            write_log=tmp_path / "w3",
        ),
    ]
    for run in runs:
        assert run.returncode == 1, run.args
        assert "BUNDLE_KEY_INVALID" in run.stderr and str(missing) in run.stderr, run.stderr
        assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert not (tmp_path / "site").exists()
