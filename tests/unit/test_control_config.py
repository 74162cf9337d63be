"""``sovereign serve`` configuration: defaults < TOML file < SOVEREIGN_* environment < command line, and
the rules that refuse unsafe combinations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kms.config import OPTIONS, ServerConfig, load_config
from kms.errors import KmsError
from sovereign.cli import build_parser

BASE = {
    "bao_addr": "http://127.0.0.1:8200",
    "bao_role_id": "r",
    "bao_secret_id_file": "/s",
    "dev_tls": "/tls",
    "oidc_issuer": "https://sso.example/realms/sovereign",
}


def test_operator_sign_in_is_required_unless_replica() -> None:
    without = {**BASE, "oidc_issuer": ""}
    with pytest.raises(KmsError, match="operator sign-in is required"):
        load_config(None, {}, without)
    assert load_config(None, {}, {**without, "replica": True}).replica


def test_two_person_actions_are_a_comma_list() -> None:
    from kms.config import two_person_actions

    assert two_person_actions(load_config(None, {}, BASE)) == {"PutPolicy", "DestroyKey"}
    assert two_person_actions(load_config(None, {}, {**BASE, "two_person_actions": " RotateKek, "})) == {
        "RotateKek"
    }
    assert two_person_actions(load_config(None, {}, {**BASE, "two_person_actions": ""})) == frozenset()


def test_option_table_matches_the_dataclass() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
    assert defaults == {o.name: o.default for o in OPTIONS}


def test_precedence(tmp_path: Path) -> None:
    file = tmp_path / "serve.toml"
    file.write_text('listen = "127.0.0.1:1111"\nnonce_ttl = 30\nclock_skew = 90\n')
    env = {"SOVEREIGN_NONCE_TTL": "45", "SOVEREIGN_WORKERS": "7"}
    config = load_config(file, env, {**BASE, "nonce_ttl": 20})
    assert (config.listen, config.nonce_ttl, config.clock_skew, config.workers) == (
        "127.0.0.1:1111",
        20,
        90,
        7,
    )


def test_bool_from_environment() -> None:
    config = load_config(None, {"SOVEREIGN_INSECURE_DEV": "true"}, {**BASE, "dev_tls": ""})
    assert config.insecure_dev


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"dev_tls": ""}, "TLS is required"),
        ({"insecure_dev": True}, "cannot be combined"),
        ({"bao_addr": ""}, "no OpenBao address"),
        ({"bao_secret_id_file": ""}, "AppRole needs both"),
        (
            {
                "bao_role_id": "",
                "bao_secret_id_file": "",
                "bao_token_file": "/t",
                "dev_tls": "",
                "tls_cert": "c",
                "tls_key": "k",
            },
            "only in dev mode",
        ),
        ({"listen": "nowhere"}, "HOST:PORT"),
        ({"nonce_ttl": 0}, "positive"),
    ],
)
def test_refused_configurations(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(KmsError) as info:
        load_config(None, {}, {**BASE, **overrides})
    assert info.value.code.value == "SERVER_CONFIG_INVALID" and fragment in info.value.message


def test_token_is_accepted_in_dev_mode() -> None:
    config = load_config(
        None, {}, {**BASE, "bao_role_id": "", "bao_secret_id_file": "", "bao_token_file": "/t"}
    )
    assert config.dev_mode and config.bao_token_file == "/t"


def test_unknown_and_mistyped_file_options(tmp_path: Path) -> None:
    file = tmp_path / "serve.toml"
    file.write_text('lisen = "x"\n')
    with pytest.raises(KmsError, match="unknown option"):
        load_config(file, {}, BASE)
    file.write_text('workers = "many"\n')
    with pytest.raises(KmsError, match="workers must be a int"):
        load_config(file, {}, BASE)


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option.flag in text and option.env in text


def test_a_non_production_trust_profile_needs_the_dev_trust_flag() -> None:
    """Security review finding 6: ``serve --trust FILE`` (simulator roots) was allowed outside dev mode."""
    with pytest.raises(KmsError) as info:
        load_config(None, {}, {**BASE, "trust": "/site/trust.json"})
    assert info.value.code == "SERVER_CONFIG_INVALID" and "--dev-trust" in info.value.message
    assert info.value.hint
    assert load_config(None, {}, {**BASE, "trust": "/site/trust.json", "dev_trust": True}).dev_trust
    assert load_config(None, {"SOVEREIGN_DEV_TRUST": "1"}, {**BASE, "trust": "/t.json"}).dev_trust
    assert load_config(None, {}, BASE).trust == "production"
