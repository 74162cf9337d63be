"""``sovereign serve`` configuration: defaults < TOML file < SOVEREIGN_* environment < command line, and
the rules that refuse unsafe combinations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kms.config import OPTIONS, ServerConfig, load_config, read_settings
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

    # who gets which keys (ApproveNode) is held by default, like policy changes and key destruction
    assert two_person_actions(load_config(None, {}, BASE)) == {"PutPolicy", "DestroyKey", "ApproveNode"}
    assert two_person_actions(load_config(None, {}, {**BASE, "two_person_actions": " RotateKek, "})) == {
        "RotateKek"
    }
    assert two_person_actions(load_config(None, {}, {**BASE, "two_person_actions": ""})) == frozenset()


def test_option_table_is_derived_from_the_dataclass() -> None:
    fields = dataclasses.fields(ServerConfig)
    assert [(f.name, f.default, f.metadata["help"]) for f in fields] == [
        (o.name, o.default, o.help) for o in OPTIONS
    ]
    assert all(isinstance(o.default, o.type) for o in OPTIONS)
    assert len({o.env for o in OPTIONS} | {e for o in OPTIONS for e in o.old_env}) == len(OPTIONS) + sum(
        len(o.old_env) for o in OPTIONS
    )  # one variable names one setting


# --- old names: still read, with a deprecation warning naming the new one ---------------------------


def test_bao_ca_cert_has_one_name_and_the_old_one_still_works(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(None, {"SOVEREIGN_BAO_CACERT": "/old.pem"}, BASE)
    assert config.bao_ca_cert == "/old.pem"
    assert "SOVEREIGN_BAO_CACERT is deprecated" in caplog.text and "use SOVEREIGN_BAO_CA_CERT" in caplog.text
    caplog.clear()
    both = {"SOVEREIGN_BAO_CACERT": "/old.pem", "SOVEREIGN_BAO_CA_CERT": "/new.pem"}
    assert load_config(None, both, BASE).bao_ca_cert == "/new.pem"
    assert "SOVEREIGN_BAO_CACERT is ignored" in caplog.text


def test_openbao_settings_read_the_same_variables_as_serve(tmp_path: Path) -> None:
    from kms.openbao.vault import AppRoleAuth, BaoSettings

    secret = tmp_path / "secret-id"
    secret.write_text("s-1\n")
    env = {
        "SOVEREIGN_BAO_ADDR": "https://bao:8200",
        "SOVEREIGN_BAO_ROLE_ID": "role-1",
        "SOVEREIGN_BAO_SECRET_ID_FILE": str(secret),
        "SOVEREIGN_BAO_CA_CERT": "/ca.pem",
    }
    settings = BaoSettings.resolve(env)
    served = load_config(
        None, env, {**BASE, "bao_addr": None, "bao_role_id": None, "bao_secret_id_file": None}
    )
    assert (
        (settings.addr, settings.ca_cert)
        == (served.bao_addr, served.bao_ca_cert)
        == ("https://bao:8200", "/ca.pem")
    )
    assert settings.auth == AppRoleAuth("role-1", "s-1")
    old = {**env, "SOVEREIGN_BAO_CACERT": "/old.pem"}
    del old["SOVEREIGN_BAO_CA_CERT"]
    assert BaoSettings.resolve(old).ca_cert == "/old.pem"


def test_node_ca_dir_and_its_old_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert load_config(None, {"SOVEREIGN_NODE_CA_DIR": "/ca-dir"}, BASE).node_ca_dir == "/ca-dir"
    file = tmp_path / "serve.toml"
    file.write_text('node_ca = "/from-file"\n')
    assert load_config(file, {}, BASE).node_ca_dir == "/from-file"
    assert "option 'node_ca' is deprecated" in caplog.text and "use 'node_ca_dir'" in caplog.text
    assert load_config(None, {}, {**BASE, "node_ca": "/flag"}).node_ca_dir == "/flag"
    assert "--node-ca is deprecated" in caplog.text and "use --node-ca-dir" in caplog.text
    with pytest.raises(KmsError, match="old name"):
        load_config(None, {}, {**BASE, "node_ca": "/a", "node_ca_dir": "/b"})
    file.write_text('node_ca = "/a"\nnode_ca_dir = "/b"\n')
    with pytest.raises(KmsError, match="old name"):
        load_config(file, {}, BASE)
    # serve read SOVEREIGN_NODE_CA as its CA directory; the node agent reads it as the CA file to pin
    assert load_config(None, {"SOVEREIGN_NODE_CA": str(tmp_path)}, BASE).node_ca_dir == str(tmp_path)
    pin = tmp_path / "ca.pem"
    pin.write_text("pem")
    assert load_config(None, {"SOVEREIGN_NODE_CA": str(pin)}, BASE).node_ca_dir == "var/node-ca"


def test_old_flag_is_accepted_by_serve_but_not_listed() -> None:
    args = build_parser().parse_args(["serve", "--node-ca", "/x"])
    assert args.node_ca == "/x" and args.node_ca_dir is None


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


def test_a_retired_option_in_a_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "serve.toml"
    file.write_text("release_window_ms = 30.0\nworkers = 3\n")
    config = load_config(file, {}, BASE)
    assert config.workers == 3 and not hasattr(config, "release_window_ms")
    assert "'release_window_ms' is retired and ignored" in caplog.text
    assert read_settings(file) == {"workers": 3}


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option.flag in text and option.env in text


# --- --insecure-dev is loopback only; the node port's rate limit ------------------------------------

INSECURE = {
    **BASE,
    "dev_tls": "",
    "insecure_dev": True,
    "bao_role_id": "",
    "bao_secret_id_file": "",
    "bao_token_file": "/t",
}


@pytest.mark.parametrize(
    "addresses",
    [
        {},
        {"listen": "localhost:1", "release_listen": "[::1]:2", "admin_listen": "127.0.0.2:3"},
    ],
)
def test_insecure_dev_on_loopback_is_accepted(addresses: dict[str, str]) -> None:
    config = load_config(None, {}, {**INSECURE, **addresses})
    assert config.insecure_dev


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("listen", "0.0.0.0:8443"),
        ("listen", "[::]:8443"),
        ("release_listen", "10.0.0.5:8444"),
        ("admin_listen", "sovereign.example:8445"),
        ("admin_listen", "[2001:db8::1]:8445"),
    ],
)
def test_insecure_dev_refuses_a_non_loopback_address(name: str, address: str) -> None:
    with pytest.raises(KmsError) as info:
        load_config(None, {}, {**INSECURE, name: address})
    assert info.value.code.value == "SERVER_CONFIG_INVALID"
    assert "loopback only" in info.value.message and name in info.value.message and info.value.hint


def test_the_same_addresses_are_fine_with_tls() -> None:
    assert load_config(None, {}, {**BASE, "listen": "0.0.0.0:8443"}).listen == "0.0.0.0:8443"


def test_node_rate_limit_from_file_environment_and_flag(tmp_path: Path) -> None:
    defaults = load_config(None, {}, BASE)
    assert (defaults.node_rate_limit, defaults.node_rate_burst) == (20.0, 200)
    file = tmp_path / "serve.toml"
    file.write_text("node_rate_limit = 5\nnode_rate_burst = 50\n")
    from_file = load_config(file, {}, BASE)
    assert (from_file.node_rate_limit, from_file.node_rate_burst) == (5.0, 50)
    env = {"SOVEREIGN_NODE_RATE_LIMIT": "2.5", "SOVEREIGN_NODE_RATE_BURST": "10"}
    config = load_config(file, env, BASE)
    assert (config.node_rate_limit, config.node_rate_burst) == (2.5, 10)
    config = load_config(file, env, {**BASE, "node_rate_limit": "0"})
    assert config.node_rate_limit == 0.0  # off
    args = build_parser().parse_args(["serve", "--node-rate-limit", "7", "--node-rate-burst", "9"])
    assert (args.node_rate_limit, args.node_rate_burst) == (7.0, 9)


@pytest.mark.parametrize(
    "overrides",
    [{"node_rate_limit": -1}, {"node_rate_limit": "nan"}, {"node_rate_limit": "inf"}, {"node_rate_burst": 0}],
)
def test_bad_rate_limits_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(KmsError) as info:
        load_config(None, {}, {**BASE, **overrides})
    assert info.value.code.value == "SERVER_CONFIG_INVALID" and "node_rate" in info.value.message


def test_a_non_production_trust_profile_needs_the_dev_trust_flag() -> None:
    """Security review finding 6: ``serve --trust FILE`` (simulator roots) was allowed outside dev mode."""
    with pytest.raises(KmsError) as info:
        load_config(None, {}, {**BASE, "trust": "/site/trust.json"})
    assert info.value.code == "SERVER_CONFIG_INVALID" and "--dev-trust" in info.value.message
    assert info.value.hint
    assert load_config(None, {}, {**BASE, "trust": "/site/trust.json", "dev_trust": True}).dev_trust
    assert load_config(None, {"SOVEREIGN_DEV_TRUST": "1"}, {**BASE, "trust": "/t.json"}).dev_trust
    assert load_config(None, {}, BASE).trust == "production"
