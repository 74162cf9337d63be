"""``serve --dev-clock-file``: the server's clock shifted by an offset read from a file (the soak's clock
steps), refused outside the dev trust profile; the clock follows the file as it changes."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kms.clock import ManualClock, OffsetFileClock, system_clock
from kms.config import load_config
from kms.errors import KmsError
from sovereign.cli.serve import dev_clock

BASE = {
    "bao_addr": "http://127.0.0.1:8200",
    "bao_role_id": "r",
    "bao_secret_id_file": "/s",
    "dev_tls": "/tls",
    "oidc_issuer": "https://sso.example/realms/sovereign",
}
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump))  # a distinct stamp even within one tick


def test_refused_outside_the_dev_trust_profile(tmp_path: Path) -> None:
    clock_file = str(tmp_path / "offset")
    for overrides in ({}, {"dev_trust": True}):  # production trust, with or without --dev-trust
        with pytest.raises(KmsError) as info:
            load_config(None, {}, {**BASE, **overrides, "dev_clock_file": clock_file})
        assert info.value.code == "SERVER_CONFIG_INVALID" and "--dev-clock-file" in info.value.message
    dev = {**BASE, "trust": "/site/trust.json", "dev_trust": True, "dev_clock_file": clock_file}
    assert load_config(None, {}, dev).dev_clock_file == clock_file
    # without the flag serve keeps the system clock
    assert dev_clock(load_config(None, {}, BASE)) is system_clock


def test_the_clock_steps_forward_and_back_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    clock = OffsetFileClock(path, ManualClock(T0)).load()
    assert clock() == T0  # no file: offset 0
    _write(path, "90\n", 1)
    assert clock() == T0 + timedelta(seconds=90)
    _write(path, "-90.5", 2)
    assert clock() == T0 - timedelta(seconds=90.5)
    _write(path, "not a number", 3)  # a bad write at run time keeps the last good offset
    assert clock() == T0 - timedelta(seconds=90.5)
    path.unlink()
    assert clock() == T0


@pytest.mark.parametrize("text", ["soon", "nan", "inf", "1e12"])
def test_a_bad_offset_at_start_is_a_coded_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "offset"
    path.write_text(text)
    config = load_config(
        None, {}, {**BASE, "trust": "/t.json", "dev_trust": True, "dev_clock_file": str(path)}
    )
    with pytest.raises(KmsError) as info:
        dev_clock(config)
    assert info.value.code == "SERVER_CONFIG_INVALID" and info.value.hint
