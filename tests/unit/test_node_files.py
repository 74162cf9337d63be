"""Node-side local rules: key files only on tmpfs (new, 0600, no symlinks), key_ref naming, renewal
timing, and the agent's settings."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enclave.agent import (
    filesystem_type,
    format_key_ref,
    parse_key_ref,
    renewal_delay,
    write_key_file,
)
from enclave.config import NodeConfig, build_provider
from enclave.errors import NodeCode, NodeError

KEY = bytes(range(32))

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
tmpfs /run tmpfs rw 0 0
/dev/vdb /run/data ext4 rw 0 0
tmpfs /mnt/with\\040space tmpfs rw 0 0
/dev/vdc /srv xfs rw 0 0
tmpfs /srv tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/", "ext4"),
        ("/home/me", "ext4"),
        ("/dev/shm", "tmpfs"),
        ("/dev/shm/keys", "tmpfs"),
        ("/dev/shmother", "ext4"),  # a name prefix is not a mount prefix
        ("/run/user/0", "tmpfs"),
        ("/run/data/keys", "ext4"),  # the longest mount point wins
        ("/mnt/with space/k", "tmpfs"),  # /proc/mounts escapes blanks as \040
        ("/srv/k", "tmpfs"),  # a later mount on the same point hides the earlier one
    ],
)
def test_filesystem_type_from_proc_mounts(path: str, fstype: str) -> None:
    assert filesystem_type(path, MOUNTS) == fstype


def mounts_file(tmp_path: Path, fstype: str) -> Path:
    target = tmp_path / "mounts"
    target.write_text(f"/dev/vda / ext4 rw 0 0\nnone {tmp_path} {fstype} rw 0 0\n")
    return target


def test_key_file_refused_off_tmpfs(tmp_path: Path) -> None:
    mounts = mounts_file(tmp_path, "ext4")
    with pytest.raises(NodeError, match="not tmpfs") as info:
        write_key_file(tmp_path / "k", KEY, mounts_file=mounts)
    assert info.value.code is NodeCode.KEY_OUTPUT_UNSAFE
    assert not (tmp_path / "k").exists()
    written = write_key_file(tmp_path / "k", KEY, mounts_file=mounts, force_non_tmpfs=True)
    assert written.read_bytes() == KEY


def test_key_file_on_tmpfs_is_new_and_0600(tmp_path: Path) -> None:
    mounts = mounts_file(tmp_path, "tmpfs")
    old = os.umask(0)
    try:
        written = write_key_file(tmp_path / "k", KEY, mounts_file=mounts)
    finally:
        os.umask(old)
    assert written.read_bytes() == KEY and stat.S_IMODE(written.stat().st_mode) == 0o600
    with pytest.raises(NodeError, match="already exists") as info:
        write_key_file(tmp_path / "k", b"\x00" * 32, mounts_file=mounts)
    assert info.value.code is NodeCode.KEY_OUTPUT_UNSAFE and written.read_bytes() == KEY


def test_key_file_never_follows_a_symlink(tmp_path: Path) -> None:
    mounts = mounts_file(tmp_path, "tmpfs")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(NodeError):
        write_key_file(tmp_path / "link", KEY, mounts_file=mounts)
    assert victim.read_bytes() == b"keep"


def test_key_file_directory_symlink_is_judged_by_its_target(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mem = tmp_path / "mem"
    mem.mkdir()
    (tmp_path / "alias").symlink_to(disk)
    mounts = tmp_path / "mounts"
    mounts.write_text(
        f"/dev/vda / ext4 rw 0 0\nnone {mem} tmpfs rw 0 0\nnone {tmp_path}/alias tmpfs rw 0 0\n"
    )
    with pytest.raises(NodeError, match="not tmpfs"):
        write_key_file(tmp_path / "alias" / "k", KEY, mounts_file=mounts)
    assert write_key_file(mem / "k", KEY, mounts_file=mounts).read_bytes() == KEY


def test_real_dev_shm_is_accepted() -> None:
    shm = Path("/dev/shm")
    assert filesystem_type("/dev/shm", Path("/proc/mounts").read_text()) == "tmpfs", "no tmpfs at /dev/shm"
    path = shm / f"sovereign-test-{os.getpid()}"
    try:
        assert write_key_file(path, KEY).read_bytes() == KEY
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("name", "version"), [("ds-train", 1), ("model.main_v2", 4294967295), ("dataset/imagenet", 3)]
)
def test_key_ref_round_trip(name: str, version: int) -> None:
    ref = format_key_ref(name, version)
    assert ref == f"{name}@v{version}" and parse_key_ref(ref.encode()) == (name, version)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"ds-train",
        b"ds-train@v0",
        b"ds-train@v01",
        b"DS@v1",
        b"a@v1@v2",
        b"\xff@v1",
        b"a//b@v1",
        b"a/@v1",
        b"/a@v1",
    ],
)
def test_other_key_refs_name_no_key(raw: bytes) -> None:
    assert parse_key_ref(raw) is None


def test_renewal_delay() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    expires = now + timedelta(seconds=300)
    assert renewal_delay(now, expires, timedelta(seconds=60)) == 240.0
    assert renewal_delay(now, expires, timedelta(seconds=400)) == 0.0
    assert renewal_delay(expires + timedelta(seconds=5), expires, timedelta(seconds=1)) == 0.0


def test_config_requires_a_pinned_ca_unless_insecure_dev(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="CA to pin") as info:
        NodeConfig.resolve({}, server="127.0.0.1:1", node_name="node-a")
    assert info.value.code is NodeCode.CONFIG_INVALID
    with pytest.raises(NodeError, match="exclude"):
        NodeConfig(server="h:1", node_name="node-a", ca=tmp_path / "ca.pem", insecure_dev=True)
    env = {"SOVEREIGN_NODE_SERVER": "h:1", "SOVEREIGN_NODE_NAME": "node-b", "SOVEREIGN_NODE_GROUPS": "a,b"}
    config = NodeConfig.resolve(env, ca=tmp_path / "ca.pem")
    assert (config.server, config.node_name, config.groups) == ("h:1", "node-b", ("a", "b"))
    assert NodeConfig.resolve(env, server="x:2", insecure_dev=True).server == "x:2"


@pytest.mark.parametrize("name", ["", "Node", "-a", "a-", "a_b", "a" * 64])
def test_config_refuses_bad_node_names(name: str) -> None:
    with pytest.raises(NodeError, match="RFC 1123"):
        NodeConfig(server="h:1", node_name=name, insecure_dev=True)


@pytest.mark.parametrize("provider", ["simulated-snp", "simulated-tdx"])
def test_simulated_provider_needs_a_saved_pki(provider: str) -> None:
    config = NodeConfig(server="h:1", node_name="node-a", insecure_dev=True, provider=provider)
    with pytest.raises(NodeError, match="SimulatedPki") as info:
        build_provider(config)
    assert info.value.code is NodeCode.PROVIDER_UNAVAILABLE and "--sim-pki DIR" in info.value.hint
