"""node.toml: the shipped sample loads; bad settings are coded CONFIG_INVALID, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.config import AgentSettings, load_node_toml, parse_listen
from enclave.errors import NodeCode, NodeError

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_sample_loads() -> None:
    config, agent = load_node_toml(ROOT / "deploy" / "config" / "node.toml", environ={})
    assert (config.node_name, config.provider, config.groups) == ("trainer-1", "auto", ("trainers",))
    assert config.ca == Path("/etc/sovereign/control-plane-ca.pem")
    assert agent == AgentSettings(socket=Path("/run/sovereign-node/agent.sock"))
    assert agent.socket_mode == 0o660 and agent.revocation_action == "deny"


@pytest.mark.parametrize(
    "text",
    [
        "server = [",  # not TOML
        'server = "h:1"\nnode_name = "n"\nca = "/x"\nbogus = 1',  # unknown setting
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nsocket_mode = "0666"',  # world-accessible
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nsocket_mode = "rw"',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nrevocation_action = "ignore"',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\ncheck_interval = 0',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nallowed_uids = ["root"]',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nmetrics_listen = "0.0.0.0:9464"',  # not loopback
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nmetrics_listen = "10.1.2.3:9464"',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nmetrics_listen = "127.0.0.1"',  # no port
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nmetrics_listen = "127.0.0.1:70000"',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nmetrics_listen = 9464',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nhand_out_keys = "no"',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\ntimeout = "soon"',
        'server = "h:1"\nnode_name = "n"\nca = "/x"\nsim_pki = "/p"',  # sim_pki without a simulated provider
        'server = "h:1"\nnode_name = "n"\nca = "/x"\nprovider = "simulated-snp"\nsim_measurement = "zz"',
        'server = "h:1"\nnode_name = "N_1"\nca = "/x"',
        "agent = 3",
    ],
)
def test_bad_settings_are_coded(tmp_path: Path, text: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(NodeError) as info:
        load_node_toml(path, environ={})
    assert info.value.code is NodeCode.CONFIG_INVALID


def test_a_missing_file_is_coded(tmp_path: Path) -> None:
    with pytest.raises(NodeError) as info:
        load_node_toml(tmp_path / "absent.toml", environ={})
    assert info.value.code is NodeCode.CONFIG_INVALID


@pytest.mark.parametrize(
    ("listen", "where"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)), ("localhost:9", ("127.0.0.1", 9))],
)
def test_metrics_listen_takes_a_loopback_address(tmp_path: Path, listen: str, where: tuple[str, int]) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nmetrics_listen = "{listen}"\n')
    _, agent = load_node_toml(path, environ={})
    assert agent.metrics_listen == listen and parse_listen(listen) == where


def test_hand_out_keys_can_be_turned_off(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('server = "h:1"\nnode_name = "n"\nca = "/x"\n[agent]\nhand_out_keys = false\n')
    assert load_node_toml(path, environ={})[1].hand_out_keys is False
