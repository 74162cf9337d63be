"""Core dumps for the key-material scan: the system's core_pattern is used only when it writes a file in the
crashing process's folder; the soft RLIMIT_CORE is raised for the run and put back; core files are told
from other files by their ELF header, and the scan reads them like any other file."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sovereign.soak.cores import enable, find_cores, is_core, restore, writes_in_cwd
from sovereign.soak.faults import FaultKind, parse_faults
from sovereign.soak.scan import scan


def elf_header(e_type: int, little: bool = True) -> bytes:
    kind = e_type.to_bytes(2, "little") if little else e_type.to_bytes(2, "big")
    return b"\x7fELF" + bytes([2, 1 if little else 2, 1]) + bytes(9) + kind + bytes(46)


@pytest.mark.parametrize(
    ("pattern", "in_cwd"),
    [
        ("core", True),
        ("core.%p.%e", True),
        ("|/usr/share/apport/apport -p%p -s%s -c%c", False),  # piped to a handler: nothing we can read
        ("/var/crash/core.%p", False),  # another folder, system-wide: not ours to scan or clean
        ("", False),
    ],
)
def test_only_a_core_pattern_writing_in_the_cwd_is_used(pattern: str, in_cwd: bool) -> None:
    assert writes_in_cwd(pattern) is in_cwd


def test_a_piped_core_pattern_leaves_the_limit_alone(tmp_path: Path) -> None:
    pattern = tmp_path / "core_pattern"
    pattern.write_text("|/usr/lib/systemd/systemd-coredump %P\n")
    before = resource.getrlimit(resource.RLIMIT_CORE)
    setup = enable(pattern)
    assert not setup.enabled and "does not write a file" in setup.reason
    assert resource.getrlimit(resource.RLIMIT_CORE) == before
    assert setup.to_dict()["core_files"] == 0


def test_a_cwd_core_pattern_raises_the_soft_limit_for_the_run_and_restore_puts_it_back(
    tmp_path: Path,
) -> None:
    pattern = tmp_path / "core_pattern"
    pattern.write_text("core\n")
    before = resource.getrlimit(resource.RLIMIT_CORE)
    setup = enable(pattern)
    try:
        if before[1] == 0:
            assert not setup.enabled and "hard RLIMIT_CORE is 0" in setup.reason
            return
        assert setup.enabled and resource.getrlimit(resource.RLIMIT_CORE) == (before[1], before[1])
        code = "import resource; print(resource.getrlimit(resource.RLIMIT_CORE)[0])"
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert int(child.stdout) == before[1]  # children inherit it
    finally:
        restore(setup)
    assert resource.getrlimit(resource.RLIMIT_CORE) == before


def test_core_files_are_told_by_their_elf_type_and_found_once_under_nested_roots(tmp_path: Path) -> None:
    (tmp_path / "cores" / "serve-0").mkdir(parents=True)
    core = tmp_path / "cores" / "serve-0" / "core"
    core.write_bytes(elf_header(4) + b"memory")
    (tmp_path / "cores" / "big-endian-core").write_bytes(elf_header(4, little=False))
    (tmp_path / "program").write_bytes(elf_header(2))  # ET_EXEC: not a core
    (tmp_path / "core.txt").write_text("core")  # named like one, is not one
    (tmp_path / "short").write_bytes(b"\x7fELF")
    assert is_core(core) and not is_core(tmp_path / "program") and not is_core(tmp_path / "short")
    found = find_cores([tmp_path, tmp_path / "cores"])
    assert found == sorted([core.resolve(), (tmp_path / "cores" / "big-endian-core").resolve()])


def test_key_material_in_a_core_file_is_a_scan_hit(tmp_path: Path) -> None:
    key = os.urandom(32)
    core = tmp_path / "cores" / "serve-0" / "core"
    core.parent.mkdir(parents=True)
    core.write_bytes(elf_header(4) + os.urandom(1000) + key.hex().encode() + os.urandom(1000))
    report = scan([tmp_path], [key])
    assert len(report.hits) == 1 and str(core) in report.hits[0]


def test_serve_abort_is_a_fault_of_both_topologies() -> None:
    assert FaultKind.SERVE_ABORT in parse_faults("all", "single")
    assert FaultKind.SERVE_ABORT in parse_faults("all", "replicas")
    assert parse_faults("serve-abort") == (FaultKind.SERVE_ABORT,)


@pytest.mark.skipif(
    not writes_in_cwd(Path("/proc/sys/kernel/core_pattern").read_text()), reason="core_pattern"
)
def test_a_sigabrt_child_under_the_raised_limit_leaves_a_core_found_in_its_folder(tmp_path: Path) -> None:
    """What serve-abort relies on, with a small process: SIGABRT dumps core into the child's cwd."""
    setup = enable()
    try:
        if not setup.enabled:
            pytest.skip(setup.reason)
        secret = os.urandom(32)
        code = f"import os, signal; k = bytes.fromhex({secret.hex()!r}) * 3; os.kill(os.getpid(), signal.SIGABRT)"
        child = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, check=False)
    finally:
        restore(setup)
    assert child.returncode == -signal.SIGABRT
    cores = find_cores([tmp_path])
    if not cores:
        pytest.skip("the kernel wrote no core here (e.g. a container's filesystem refuses it)")
    assert len(scan([tmp_path], [secret]).hits) == 1  # the key held in memory is in the dump


@pytest.mark.skipif(
    not writes_in_cwd(Path("/proc/sys/kernel/core_pattern").read_text()), reason="core_pattern"
)
def test_serve_refuses_core_dumps_even_when_its_parent_allows_them(tmp_path: Path) -> None:
    """The same SIGABRT after ``sovereign serve``'s first step leaves no core: its memory holds released keys."""
    setup = enable()
    try:
        if not setup.enabled:
            pytest.skip(setup.reason)
        code = (
            "import os, signal; from sovereign.cli._process import refuse_core_dumps; refuse_core_dumps(); "
            "os.kill(os.getpid(), signal.SIGABRT)"
        )
        child = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, check=False)
    finally:
        restore(setup)
    assert child.returncode == -signal.SIGABRT, child.stderr
    assert find_cores([tmp_path]) == []


def test_every_cli_command_runs_with_core_dumps_refused(tmp_path: Path) -> None:
    """``main`` lowers the soft core limit before any command runs (keys pass through these processes)."""
    from sovereign.cli import main

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.skip("the hard core limit is 0 here: nothing to lower")
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        bad = tmp_path / "bad.toml"
        bad.write_text("not a policy\n")
        main(["policy", "check", str(bad)])
        assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 0
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
