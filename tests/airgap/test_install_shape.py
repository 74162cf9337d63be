"""The shape of an install, piece by piece (the end-to-end run is test_airgap_install.py): units, config and
OpenBao HCL rendered for the chosen folders and users; the service users created with ownership set;
rollback between releases; release keys with a fingerprint and a safe name; the build's progress and its
warning; the installer's coded errors for every wrong shape of input (never a traceback)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from airgap.bundlelib import ROOT, Built, carry, system_python, world_readable_folder

from sovereign.bundle import installer as inst
from sovereign.bundle.build import NO_COLLATERAL_WARNING

INSTALLER = ROOT / "sovereign" / "bundle" / "installer.py"
DEFAULTS = ("/opt/sovereign", "/etc/sovereign", "/var/lib/sovereign", "/etc/openbao", "/var/lib/openbao",
            "/var/log/openbao")  # fmt: skip


def _layout(base: Path, tag: str = "t", manage_users: bool = False) -> inst.Layout:
    return inst.Layout(
        prefix=base / "opt", config_dir=base / "etc", data_dir=base / "var",
        openbao_config_dir=base / "bao-etc", openbao_data_dir=base / "bao-var", openbao_log_dir=base / "bao-log",
        user=f"sovt-{tag}", openbao_user=f"baot-{tag}", manage_users=manage_users,
    )  # fmt: skip


def _sovereign(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    return subprocess.run([sys.executable, "-m", "sovereign", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, check=False)  # fmt: skip


def test_every_shipped_unit_config_and_hcl_is_rendered_for_the_chosen_layout(tmp_path: Path) -> None:
    layout = _layout(tmp_path / "site")
    shipped = [*sorted((ROOT / "deploy" / "systemd").glob("*.service")), ROOT / "deploy" / "config" / "sovereign.toml",
               ROOT / "deploy" / "config" / "node.toml", ROOT / "deploy" / "openbao" / "openbao.hcl"]  # fmt: skip
    for template in shipped:
        text = inst.render(template.read_text(), layout)
        left = [d for d in DEFAULTS if re.search(r"(?<![\w.@/-])" + re.escape(d) + r"(?![\w.-])", text)]
        assert not left, f"{template.name} still names {left}"
        assert "@CONFIG_DIR@" not in text and "@DATA_DIR@" not in text
        assert not re.search(r"^(User|Group)=(sovereign|openbao)\s*$", text, re.M), template.name
    plane = inst.render((ROOT / "deploy" / "systemd" / "sovereign-control-plane.service").read_text(), layout)
    assert (
        f"ExecStart={layout.prefix}/current/venv/bin/sovereign serve --config {layout.config_dir}/sovereign.toml"
        in plane
    )
    assert (
        f"User={layout.user}\nGroup={layout.user}\n" in plane
        and f"ReadWritePaths={layout.data_dir}\n" in plane
    )
    bao = inst.render((ROOT / "deploy" / "systemd" / "openbao.service").read_text(), layout)
    assert (
        f"User={layout.openbao_user}\n" in bao and f"-config={layout.openbao_config_dir}/openbao.hcl" in bao
    )
    hcl = inst.render((ROOT / "deploy" / "openbao" / "openbao.hcl").read_text(), layout)
    assert (
        f'path    = "{layout.openbao_data_dir}/raft"' in hcl and f"{layout.openbao_log_dir}/audit.log" in hcl
    )
    # whole path components only, and one pass: a chosen folder is never substituted again
    assert inst.render("/etc/sovereign-old /etc/sovereignx /x/etc/sovereign", layout) == (
        "/etc/sovereign-old /etc/sovereignx /x/etc/sovereign"
    )
    nested = inst.Layout(Path("/etc/sovereign/opt"), Path("/opt/sovereign/etc"), Path("/d"))
    assert inst.render("/opt/sovereign /etc/sovereign", nested) == "/etc/sovereign/opt /opt/sovereign/etc"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "Root Kit"),
        ("openbao_user", "../x"),
        ("config_dir", Path("relative/etc")),
        ("data_dir", Path("/var/lib/with space")),
    ],
)
def test_a_bad_layout_is_a_coded_error(tmp_path: Path, field: str, value: object) -> None:
    from dataclasses import replace

    layout = replace(_layout(tmp_path), **{field: value})
    with pytest.raises(inst.BundleError) as err:
        layout.check()
    assert err.value.code is inst.BundleCode.BUNDLE_LAYOUT_INVALID and err.value.hint


@pytest.fixture
def service_users() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("creating service users needs root")
    tag = secrets.token_hex(3)
    try:
        yield tag
    finally:
        for name in (f"sovt-{tag}", f"baot-{tag}"):
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)


def test_service_users_are_created_and_own_what_they_write(tmp_path: Path, service_users: str) -> None:
    with world_readable_folder() as base:
        _created_and_owned(tmp_path / "bundle", base / "site", service_users)


def _created_and_owned(bundle: Path, site: Path, service_users: str) -> None:
    shutil.copytree(ROOT / "deploy" / "config", bundle / inst.CONFIG_SAMPLES)
    (bundle / "deploy" / "openbao").mkdir()
    shutil.copy2(ROOT / "deploy" / "openbao" / "openbao.hcl", bundle / inst.OPENBAO_SAMPLE)
    layout = _layout(site, service_users, manage_users=True)
    assert inst.ensure_users(layout) == [layout.user, layout.openbao_user]
    assert inst.ensure_users(layout) == []  # idempotent: existing users are kept
    user, bao = pwd.getpwnam(layout.user), pwd.getpwnam(layout.openbao_user)
    assert user.pw_uid < 1000 and user.pw_shell.endswith(("nologin", "false"))  # system accounts, no login
    assert not Path(user.pw_dir).exists() or Path(user.pw_dir) == layout.data_dir
    created = inst.lay_out_config(bundle, layout)
    assert str(layout.config_dir / "sovereign.toml") in created

    def owner(path: Path) -> tuple[str, str, str]:
        st = path.stat()
        return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, oct(st.st_mode & 0o777)

    assert owner(layout.config_dir) == ("root", user.pw_name, "0o750")
    assert owner(layout.config_dir / "sovereign.toml") == ("root", user.pw_name, "0o640")
    assert owner(layout.config_dir / "openbao") == (user.pw_name, user.pw_name, "0o700")
    assert owner(layout.config_dir / "tls") == ("root", user.pw_name, "0o750")
    assert owner(layout.data_dir) == (user.pw_name, user.pw_name, "0o700")
    assert owner(layout.data_dir / "collateral") == (user.pw_name, user.pw_name, "0o700")
    assert owner(layout.openbao_config_dir / "openbao.hcl") == ("root", bao.pw_name, "0o640")
    assert owner(layout.openbao_data_dir / "raft") == (bao.pw_name, bao.pw_name, "0o700")
    assert owner(layout.openbao_log_dir) == (bao.pw_name, bao.pw_name, "0o700")
    config = (layout.config_dir / "sovereign.toml").read_text()
    assert f'db = "{layout.data_dir}/sovereign.db"' in config and "@" not in config.replace("@v", "")
    # the service user can read its config (setpriv: as the unit's User= would run)
    read = subprocess.run(["setpriv", f"--reuid={user.pw_name}", f"--regid={user.pw_name}", "--init-groups",
                           "--", "cat", str(layout.config_dir / "sovereign.toml")], capture_output=True, check=False)  # fmt: skip
    assert read.returncode == 0, read.stderr
    # and cannot change it
    write = subprocess.run(["setpriv", f"--reuid={user.pw_name}", f"--regid={user.pw_name}", "--init-groups",
                            "--", "sh", "-c", f"echo x >> {layout.config_dir / 'sovereign.toml'}"],
                           capture_output=True, check=False)  # fmt: skip
    assert write.returncode != 0


def test_installing_without_root_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    python = system_python()
    if python is None:
        pytest.fail("needs a Python 3.11 that the user nobody can run (/usr/bin/python3.11)")
    layout = _layout(tmp_path / "site", manage_users=True)
    run = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", python, "-I", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import installer as i; from pathlib import Path; "
         f"i.ensure_users(i.Layout(Path('{layout.prefix}'), Path('{layout.config_dir}'), Path('{layout.data_dir}')))",
         str(INSTALLER.parent)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode != 0 and "needs root" in run.stderr, run.stderr
    assert not (tmp_path / "site").exists()


def _fake_release(prefix: Path, name: str) -> Path:
    release = prefix / "releases" / name
    (release / "venv").mkdir(parents=True)
    return release


def test_rollback_switches_current_and_previous_and_refuses_without_a_previous(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"
    first = _fake_release(prefix, "1.0-aaa")
    (prefix / "current").symlink_to("releases/1.0-aaa")
    alone = _sovereign("bundle", "rollback", "--prefix", prefix)
    assert alone.returncode == 1 and "BUNDLE_NO_PREVIOUS_RELEASE" in alone.stderr and "hint:" in alone.stderr
    assert "Traceback" not in alone.stderr
    nothing = _sovereign("bundle", "rollback", "--prefix", tmp_path / "nowhere", "--json")
    assert (
        nothing.returncode == 1
        and json.loads(nothing.stdout)["error"]["code"] == "BUNDLE_NO_PREVIOUS_RELEASE"
    )

    second = _fake_release(prefix, "1.1-bbb")
    inst._switch(prefix / "current", second)
    inst._switch(prefix / "previous", first)
    back = _sovereign("bundle", "rollback", "--prefix", prefix)
    assert back.returncode == 0, back.stderr
    assert "1.0-aaa" in back.stdout and "restart" in back.stdout
    assert (prefix / "current").resolve() == first and (prefix / "previous").resolve() == second
    assert os.readlink(prefix / "current") == "releases/1.0-aaa"  # relative: the prefix can move


def test_keygen_prints_a_fingerprint_openssl_agrees_with_and_refuses_unsafe_names(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    made = _sovereign("bundle", "keygen", "--out", out, "--name", "release", "--json")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["public_key"] == str(out / "release.pub.pem") and doc["private_key"] == str(
        out / "release.key"
    )
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", doc["public_key"], "-outform", "DER"],
                         capture_output=True, check=True).stdout  # fmt: skip
    import hashlib

    assert doc["fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()
    assert oct((out / "release.key").stat().st_mode & 0o777) == "0o600"
    text = _sovereign("bundle", "keygen", "--out", out, "--name", "collateral")
    assert text.returncode == 0 and re.search(r"^fingerprint: sha256:[0-9a-f]{64}$", text.stdout, re.M), (
        text.stdout
    )
    assert "openssl pkey -pubin -in collateral.pub.pem -outform DER" in text.stdout  # the file's own name

    for bad in ("../evil", "/tmp/evil", "a/b", "..", ".hidden", "", "x" * 65, "evil\n"):
        run = _sovereign("bundle", "keygen", "--out", out, "--name", bad)
        assert run.returncode == 1 and "BUNDLE_KEY_INVALID" in run.stderr and "hint:" in run.stderr, (
            bad,
            run.stderr,
        )
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "evil.key").exists() and not Path("/tmp/evil.key").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "collateral.key", "collateral.pub.pem", "release.key", "release.pub.pem"]  # fmt: skip
    again = _sovereign("bundle", "keygen", "--out", out, "--name", "release", "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["code"] == "BUNDLE_KEY_INVALID"


def test_build_shows_progress_warns_without_collateral_and_ships_no_demo_material(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert _sovereign("bundle", "keygen", "--out", key, "--name", "release").returncode == 0
    run = _sovereign("bundle", "build", "--key", key / "release.key", "--out", tmp_path / "dist", "--worktree",
                     "--cache", ROOT / "var" / "bundle-cache", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    progress = [ln for ln in run.stderr.splitlines() if ln and not ln.startswith("warning:")]
    assert len(progress) >= 5, run.stderr
    assert any("wheels" in ln for ln in progress) and any("writing" in ln for ln in progress)
    assert f"warning: {NO_COLLATERAL_WARNING}" in run.stderr
    doc = json.loads(run.stdout)
    assert doc["warnings"] == [NO_COLLATERAL_WARNING]
    manifest = json.loads(Path(next(p for p in doc["publish"] if p.endswith(".manifest.json"))).read_text())
    paths = [f["path"] for f in manifest["files"]]
    assert "deploy/config/policies/default.toml" in paths
    assert not [p for p in paths if "dev-realm" in p or p.endswith("demo.toml")], paths
    assert "deploy/systemd/sovereign-control-plane.service" in paths


def _installer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["python3", "-I", str(INSTALLER), *map(str, args)], capture_output=True, text=True,
                          check=False)  # fmt: skip


def test_the_installer_answers_every_wrong_shape_with_a_code_and_a_hint(tmp_path: Path) -> None:
    key = tmp_path / "release.pub.pem"
    assert _sovereign("bundle", "keygen", "--out", tmp_path, "--name", "release").returncode == 0
    not_tar = tmp_path / "notes.tar.gz"
    not_tar.write_text("not a tarball\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "no such bundle": (
            ["--bundle", tmp_path / "nope.tar.gz", "--public-key", key],
            "BUNDLE_FILE_MISSING",
        ),
        "not a tarball, no sums": (["--bundle", not_tar, "--public-key", key], "BUNDLE_FILE_MISSING"),
        "empty folder": (["--bundle", empty, "--public-key", key, "--verify-only"], "BUNDLE_FILE_MISSING"),
        "missing key": (["--bundle", empty, "--public-key", tmp_path / "nope.pem"], "BUNDLE_FILE_MISSING"),
        "key is not PEM": (["--bundle", not_tar, "--public-key", not_tar], "BUNDLE_KEY_INVALID"),
    }
    for name, (args, code) in cases.items():
        run = _installer(*args, "--prefix", tmp_path / "site")
        assert run.returncode == 1, (name, run.stderr)
        assert f"error: {code}:" in run.stderr and "hint:" in run.stderr, (name, run.stderr)
        assert "Traceback" not in run.stderr + run.stdout, (name, run.stderr)
    assert not (tmp_path / "site").exists()


def test_the_cli_answers_wrong_shapes_with_a_code_and_says_ok_in_words(
    tmp_path: Path, built_bundle: Built
) -> None:
    key = tmp_path / "release.pub.pem"
    assert _sovereign("bundle", "keygen", "--out", tmp_path, "--name", "release").returncode == 0
    not_tar = tmp_path / "notes.tar.gz"
    not_tar.write_text("not a tarball\n")
    for args in (["verify", not_tar, "--public-key", key], ["verify", tmp_path / "nope", "--public-key", key],
                 ["install", not_tar, "--public-key", not_tar, "--prefix", tmp_path / "site"]):  # fmt: skip
        run = _sovereign("bundle", *args)
        assert run.returncode == 1 and "error: BUNDLE_" in run.stderr and "hint:" in run.stderr, (
            args,
            run.stderr,
        )
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    carried = carry(built_bundle, tmp_path / "carried")
    ok = _sovereign("bundle", "verify", carried / built_bundle.result.archive.name, "--public-key",
                    built_bundle.public_key)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (
        ok.stdout.strip()
        == f"bundle OK: release {built_bundle.release_id}, {len(built_bundle.result.manifest['files'])} files verified"
    )  # type: ignore[arg-type]


def test_install_sh_takes_a_tarball_with_bundle(tmp_path: Path, built_bundle: Built) -> None:
    """What the review hit: ``install.sh --bundle X.tar.gz`` was refused with 'Not a directory'."""
    carried = carry(built_bundle, tmp_path / "carried")
    with tarfile.open(built_bundle.result.archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (folder,) = (tmp_path / "x").iterdir()
    run = subprocess.run([str(folder / "install.sh"), "--bundle", str(carried / built_bundle.result.archive.name),
                          "--public-key", str(built_bundle.public_key), "--verify-only"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"release {built_bundle.release_id}" in run.stdout
