"""Policy documents: strict validation with file, key path and line; shipped defaults; digest; CLI check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attestation.claims import TcbStatus
from policies import Code, PolicyError, load_default, load_policy, parse_policy, summarize
from sovereign.cli import main

M = "ab" * 48  # a 48-byte measurement
H32 = "cd" * 32

VALID = f"""\
schema = 1

[appraisal]
simulated_evidence = "deny"

[appraisal.snp]
products = ["Milan"]

[appraisal.snp.min_tcb.Milan]
bootloader = 3
tee = 0
snp = 8
microcode = 115

[[appraisal.snp.groups]]
name = "trainers"
measurements = ["{M}"]

[[appraisal.snp.groups]]
name = "evaluators"
measurements = [
  "{M}",
  "{M}",
]
host_data = ["{H32}"]

[appraisal.tdx]
tcb_statuses = ["UpToDate"]

[[appraisal.tdx.groups]]
name = "trainers"

[[appraisal.tdx.groups.images]]
mrtd = "{M}"
rtmr0 = "{M}"

[[release.rules]]
name = "read-datasets"
groups = ["trainers"]
keys = ["dataset/*"]
purposes = ["read"]
"""


def _error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    assert info.value.code is Code.POLICY_INVALID
    assert "p.toml" in info.value.message
    return info.value


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[occurrence - 1]


def test_valid_document_parses_with_defaults_filled_in() -> None:
    policy = parse_policy(VALID)
    assert policy.version == 1
    snp = policy.appraisal.snp
    assert snp is not None
    assert snp.forbid_debug and snp.forbid_migration_agent and snp.max_vmpl == 0
    assert snp.signing_keys == {"vcek", "vlek"}
    assert [g.name for g in snp.groups] == ["trainers", "evaluators"]
    assert snp.groups[1].host_data == frozenset({bytes.fromhex(H32)})
    tdx = policy.appraisal.tdx
    assert tdx is not None and tdx.tcb_statuses == {TcbStatus.UP_TO_DATE}
    assert tdx.groups[0].images[0].rtmrs == (bytes.fromhex(M), None, None, None)
    rule = policy.release.rules[0]
    assert (rule.lease_seconds, rule.max_evidence_age) == (300, 3600)
    assert policy.groups() == {"trainers", "evaluators"}


@pytest.mark.parametrize(
    ("old", "new", "path", "needle", "occurrence"),
    [
        # the second group's first measurement, one hex digit short
        (
            f'  "{M}",\n  "{M}",',
            f'  "{M[:-1]}",\n  "{M}",',
            "appraisal.snp.groups[1].measurements[0]",
            f'"{M[:-1]}"',
            1,
        ),
        # the same, second element
        (
            f'  "{M}",\n  "{M}",',
            f'  "{M}",\n  "{M}0",',
            "appraisal.snp.groups[1].measurements[1]",
            f'"{M}0"',
            1,
        ),
        (
            f'host_data = ["{H32}"]',
            f'host_data = ["{H32}00"]',
            "appraisal.snp.groups[1].host_data[0]",
            "host_data",
            1,
        ),
        ('rtmr0 = "', 'rtmr0 = "zz', "appraisal.tdx.groups[0].images[0].rtmr0", "rtmr0", 1),
        ("tee = 0", "tee = 0\nteee = 1", "appraisal.snp.min_tcb.Milan.teee", "teee", 1),
        ("tee = 0", 'tee = "0"', "appraisal.snp.min_tcb.Milan.tee", 'tee = "0"', 1),
        ("microcode = 115", "microcode = 256", "appraisal.snp.min_tcb.Milan.microcode", "microcode", 1),
        (
            'tcb_statuses = ["UpToDate"]',
            'tcb_statuses = ["Revoked"]',
            "appraisal.tdx.tcb_statuses[0]",
            "tcb_statuses",
            1,
        ),
        (
            'tcb_statuses = ["UpToDate"]',
            'tcb_statuses = ["Fine"]',
            "appraisal.tdx.tcb_statuses[0]",
            "tcb_statuses",
            1,
        ),
        (
            'groups = ["trainers"]',
            'groups = ["trainer"]',
            "release.rules[0].groups[0]",
            'groups = ["trainer"]',
            1,
        ),
        ('keys = ["dataset/*"]', 'keys = ["dataset*"]', "release.rules[0].keys[0]", "keys =", 1),
        ('purposes = ["read"]', 'purposes = ["delete"]', "release.rules[0].purposes[0]", "purposes", 1),
        ('purposes = ["read"]', "purposes = []", "release.rules[0].purposes", "purposes", 1),
        ('name = "evaluators"', 'name = "trainers"', "appraisal.snp.groups[1].name", 'name = "trainers"', 2),
        (
            'simulated_evidence = "deny"',
            "simulated_evidence = false",
            "appraisal.simulated_evidence",
            "simulated",
            1,
        ),
        (
            'products = ["Milan"]',
            'products = ["Milan", "Genoa"]',
            "appraisal.snp.min_tcb.Genoa",
            "[appraisal.snp.min_tcb.Milan]",
            1,
        ),
        (
            'products = ["Milan"]',
            'products = ["Genoa"]',
            "appraisal.snp.min_tcb.Milan",
            "[appraisal.snp.min_tcb.Milan]",
            1,
        ),
        ("schema = 1", "schema = 2", "schema", "schema", 1),
        ("schema = 1", "schema = 1\ncolour = 1", "colour", "colour", 1),
    ],
)
def test_schema_errors_name_key_path_and_line(
    old: str, new: str, path: str, needle: str, occurrence: int
) -> None:
    assert old in VALID
    text = VALID.replace(old, new, 1)
    err = _error(text)
    assert err.path == path
    assert err.line == _line_of(text, needle, occurrence)
    assert f"p.toml line {err.line}: {path}:" in err.message
    assert err.source == "p.toml"


def test_missing_required_key_points_at_its_table() -> None:
    text = VALID.replace('name = "read-datasets"\n', "").replace('groups = ["trainers"]\nkeys', "keys")
    err = _error(text)
    assert err.path == "release.rules[0].groups"
    assert err.line == _line_of(text, "[[release.rules]]")
    assert "missing" in err.message


def test_missing_schema_and_appraisal() -> None:
    assert _error("").path == "schema"
    assert _error("schema = 1\n").path == "appraisal"


def test_tdx_group_needs_an_image() -> None:
    text = VALID.replace(f'[[appraisal.tdx.groups.images]]\nmrtd = "{M}"\nrtmr0 = "{M}"\n', "")
    assert _error(text).path == "appraisal.tdx.groups[0].images"


def test_toml_syntax_error_has_the_line() -> None:
    text = VALID.replace("tee = 0", "tee = = 0")
    err = _error(text)
    assert err.line == _line_of(text, "tee = = 0")
    assert err.path is None
    assert "not valid TOML" in err.message


def test_unknown_can_be_accepted_explicitly_but_not_by_default() -> None:
    assert TcbStatus.UNKNOWN not in load_default("default").appraisal.tdx.tcb_statuses  # type: ignore[union-attr]
    relaxed = parse_policy(VALID.replace('["UpToDate"]', '["UpToDate", "Unknown"]'))
    assert TcbStatus.UNKNOWN in relaxed.appraisal.tdx.tcb_statuses  # type: ignore[union-attr]
    assert any("Unknown" in n for n in summarize(relaxed)["notes"])


@pytest.mark.parametrize("name", ["default", "demo"])
def test_shipped_policies_load_and_match_files(name: str) -> None:
    shipped = load_default(name)
    path = Path(__file__).resolve().parents[2] / "policies" / "defaults" / f"{name}.toml"
    assert load_policy(path).digest == shipped.digest


def test_default_policy_is_production_like() -> None:
    policy = load_default("default")
    a = policy.appraisal
    assert a.simulated_evidence.value == "deny"
    assert a.snp is not None and a.snp.forbid_debug and a.snp.forbid_migration_agent
    assert a.tdx is not None and a.tdx.tcb_statuses == {TcbStatus.UP_TO_DATE} and a.tdx.forbid_debug
    assert policy.release.rules == ()


def test_demo_policy_has_the_demo_placeholders() -> None:
    policy = load_default("demo")
    snp, tdx = policy.appraisal.snp, policy.appraisal.tdx
    assert snp is not None and tdx is not None
    assert snp.groups[0].measurements == {b"\x11" * 48}
    image = tdx.groups[0].images[0]
    assert image.mrtd == b"\x22" * 48 and image.rtmrs == (bytes(48),) * 4
    rules = {
        r.name: (r.keys, sorted(p.value for p in r.purposes), r.lease_seconds) for r in policy.release.rules
    }
    assert sorted(rules.values()) == [(("dataset/*",), ["read"], 300), (("model/*",), ["read", "write"], 300)]


def test_digest_ignores_formatting_but_not_meaning() -> None:
    base = parse_policy(VALID)
    reformatted = parse_policy(
        "# comment\n" + VALID.replace(M, M.upper(), 1).replace("tee = 0", "tee    =   0")
    )
    assert reformatted.digest == base.digest
    explicit_default = parse_policy(VALID.replace("[appraisal.snp]\n", "[appraisal.snp]\nmax_vmpl = 0\n"))
    assert explicit_default.digest == base.digest
    changed = parse_policy(VALID.replace("microcode = 115", "microcode = 116"))
    assert changed.digest != base.digest
    assert len(base.digest) == 64


def test_load_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "absent.toml")
    assert info.value.code is Code.POLICY_UNREADABLE
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"schema = 1\n\xff\n")
    with pytest.raises(PolicyError) as info:
        load_policy(bad)
    assert info.value.code is Code.POLICY_INVALID and "UTF-8" in info.value.message
    with pytest.raises(PolicyError):
        load_default("../default")


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(VALID)
    assert main(["policy", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and "read-datasets" in out and parse_policy(VALID).digest in out

    assert main(["policy", "check", str(good), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["groups"]["trainers"] == {"snp_measurements": 1, "tdx_images": 1}

    bad = tmp_path / "bad.toml"
    bad.write_text(VALID.replace("microcode = 115", "microcode = -1"))
    assert main(["policy", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    line = _line_of(bad.read_text(), "microcode = -1")
    assert f"POLICY_INVALID: {bad} line {line}: appraisal.snp.min_tcb.Milan.microcode" in err
    assert main(["policy", "check", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "POLICY_INVALID"
