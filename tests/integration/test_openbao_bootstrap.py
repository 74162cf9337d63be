"""Bootstrap against a real OpenBao: idempotent, least privilege, same policy as deploy/openbao/."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kms.errors import Code, OpenBaoError
from kms.openbao.bootstrap import POLICY_HCL, POLICY_NAME, ROLE_NAME, bootstrap
from kms.openbao.data_owner import OWNER_POLICY_HCL, OWNER_POLICY_NAME
from kms.openbao.vault import BaoSettings, OpenBaoTransit, TokenAuth

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_first_run_creates_everything(kms_dev: Kms) -> None:
    steps = dict(kms_dev.report.steps)
    assert steps["transit engine"] == "created"
    assert steps["transit key sovereign-kek"] == "created"
    assert steps["transit key sovereign-audit"] == "created"
    assert steps[f"policy {POLICY_NAME}"] == "created"
    assert steps["approle auth"] == "created"
    assert steps[f"role {ROLE_NAME}"] == "created"
    assert (
        steps["policy sovereign-data-owner"] == "created" and steps["role sovereign-data-owner"] == "created"
    )
    assert kms_dev.report.changed


def test_second_run_changes_nothing_but_issues_a_new_secret_id(kms_dev: Kms, tmp_path: Path) -> None:
    again = bootstrap(kms_dev.server.addr, kms_dev.root_token, tmp_path)
    statuses = dict(again.steps)
    assert statuses.pop("secret id") == "issued"
    assert statuses.pop("owner secret id") == "issued"
    assert set(statuses.values()) == {"unchanged"}
    assert again.owner_role_id == kms_dev.report.owner_role_id
    assert not again.changed
    assert again.role_id == kms_dev.report.role_id
    new_secret = Path(again.secret_id_file).read_text().strip()
    assert new_secret != Path(kms_dev.report.secret_id_file).read_text().strip()
    assert stat.S_IMODE(Path(again.secret_id_file).stat().st_mode) == 0o600


def test_keys_are_not_exportable_and_not_deletable(kms_dev: Kms) -> None:
    admin = kms_dev.admin()
    kek = admin.key_info("sovereign-kek")
    assert (kek.type, kek.exportable, kek.deletion_allowed) == ("aes256-gcm96", False, False)
    audit = admin.key_info("sovereign-audit")
    assert (audit.type, audit.exportable, audit.deletion_allowed) == ("ed25519", False, False)
    provenance = admin.key_info("sovereign-provenance")
    assert (provenance.type, provenance.exportable, provenance.deletion_allowed) == ("ed25519", False, False)


def test_policy_in_openbao_equals_the_deploy_file(kms_dev: Kms) -> None:
    stored = kms_dev.admin().call("read policy", lambda c: c.sys.read_acl_policy(POLICY_NAME))["data"][
        "policy"
    ]
    assert stored == POLICY_HCL
    assert (ROOT / "deploy/openbao/sovereign-control-plane.hcl").read_text() == POLICY_HCL


def test_data_owner_policy_in_openbao_equals_the_deploy_file(kms_dev: Kms) -> None:
    """OpenBao parsed and stored the shipped data-owner policy as bootstrap wrote it."""
    stored = kms_dev.admin().call("read policy", lambda c: c.sys.read_acl_policy(OWNER_POLICY_NAME))["data"]
    assert stored["policy"] == OWNER_POLICY_HCL
    assert (ROOT / "deploy/openbao/sovereign-data-owner.hcl").read_text() == OWNER_POLICY_HCL


def test_role_tokens_carry_only_the_control_plane_policy(kms_dev: Kms) -> None:
    transit = kms_dev.approle()
    info = transit.call("lookup", lambda c: c.auth.token.lookup_self())["data"]
    assert info["policies"] == [POLICY_NAME]
    assert info["renewable"] is True
    assert 0 < info["ttl"] <= 20 * 60


def test_bootstrap_with_a_non_operator_token_is_refused(kms_dev: Kms, tmp_path: Path) -> None:
    token = kms_dev.approle().call("lookup", lambda c: c.token)
    with pytest.raises(OpenBaoError) as info:
        bootstrap(kms_dev.server.addr, token, tmp_path)
    assert info.value.code is Code.KMS_PERMISSION_DENIED
    assert "operator" in info.value.hint


def test_bootstrap_with_a_wrong_token_says_so(kms_dev: Kms, tmp_path: Path) -> None:
    with pytest.raises(OpenBaoError) as info:
        bootstrap(kms_dev.server.addr, "not-a-token", tmp_path)
    assert info.value.code is Code.KMS_TOKEN_EXPIRED
    assert not (tmp_path / "secret-id").exists()


def test_admin_repr_hides_the_token(kms_dev: Kms) -> None:
    transit = OpenBaoTransit(BaoSettings(addr=kms_dev.server.addr, auth=TokenAuth(kms_dev.root_token)))
    assert kms_dev.root_token not in repr(transit)
    assert kms_dev.root_token not in repr(transit.settings)


def test_the_cli_reads_the_token_from_stdin_and_names_the_owner_files(kms_dev: Kms, tmp_path: Path) -> None:
    """``--token-file -``: a bootstrap run as the service user (runuser) cannot open root's token file,
    but can read it from a redirect the root shell opened."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    argv = [sys.executable, "-m", "sovereign", "kms", "bootstrap", "--addr", kms_dev.server.addr]
    done = subprocess.run([*argv, "--token-file", "-", "--out", str(tmp_path)], input=kms_dev.root_token + "\n",
                          capture_output=True, text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"data owner secret id file: {tmp_path / 'owner-secret-id'}" in done.stdout
    assert (tmp_path / "owner-secret-id").is_file() and kms_dev.root_token not in done.stdout + done.stderr
    empty = subprocess.run([*argv, "--token-file", "-", "--out", str(tmp_path), "--json"], input="",
                           capture_output=True, text=True, env=env, timeout=120, check=False)  # fmt: skip
    assert empty.returncode == 1 and json.loads(empty.stdout)["error"]["code"] == "KMS_CONFIG_INVALID"
