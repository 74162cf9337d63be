"""deploy/kubernetes/control-plane.yaml runs with the current server: its embedded sovereign.toml loads
with ``kms.config.load_config`` (the loader ``sovereign serve`` uses), every port the config listens on
is a container port and reaches a Service, every file the config names sits on a volume mounted into
the container, and the node client CA is one Secret shared by every replica."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from kms.config import ServerConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "control-plane.yaml"


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _config(tmp_path: Path) -> ServerConfig:
    path = tmp_path / "sovereign.toml"
    path.write_text(_one("ConfigMap", "sovereign-config")["data"]["sovereign.toml"])
    return load_config(path, environ={})  # the pod's environment sets no SOVEREIGN_* variable


def _container() -> dict[str, Any]:
    (container,) = _one("Deployment", "sovereign-control-plane")["spec"]["template"]["spec"]["containers"]
    return container


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_embedded_config_loads_with_the_servers_loader(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.trust == "production" and not config.dev_mode
    assert config.oidc_issuer.startswith("https://") and config.bao_role_id and config.bao_secret_id_file
    assert not config.bao_token_file  # AppRole, never a static token
    container = _container()
    assert container["args"] == ["serve", "--config", "/etc/sovereign/sovereign.toml"]
    assert not [e for e in container.get("env", []) if e["name"].startswith("SOVEREIGN_")]


def test_every_listening_port_is_exposed(tmp_path: Path) -> None:
    config = _config(tmp_path)
    node, release, admin = (_port(a) for a in (config.listen, config.release_listen, config.admin_listen))
    assert len({node, release, admin}) == 3
    assert {node, release, admin} <= {p["containerPort"] for p in _container()["ports"]}
    nodes_service = _one("Service", "sovereign")["spec"]
    assert {p["targetPort"] for p in nodes_service["ports"]} == {node, release}  # never the admin port
    assert {p["targetPort"] for p in _one("Service", "sovereign-admin")["spec"]["ports"]} == {admin}


def test_every_file_the_config_names_is_mounted(tmp_path: Path) -> None:
    config = _config(tmp_path)
    spec = _one("Deployment", "sovereign-control-plane")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} <= volumes.keys()
    db_query = parse_qs(urlsplit(config.db).query)
    files = [config.tls_cert, config.tls_key, config.node_ca_dir, config.oidc_ca_file, config.bao_ca_cert,
             config.bao_secret_id_file, config.collateral, *db_query.get("sslrootcert", [])]  # fmt: skip
    files += [e["value"] for e in _container().get("env", []) if e["name"] == "PGPASSFILE"]
    for probe in ("readinessProbe", "livenessProbe"):
        args = _container()[probe]["exec"]["command"]
        files += [a.split("=", 1)[1] for a in args if a.startswith("-tls-ca-cert=")]
    for path in files:
        assert path.startswith("/"), path
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (
            f"{path} is not mounted"
        )


def test_the_node_ca_is_one_secret_shared_by_every_replica(tmp_path: Path) -> None:
    """A node registers with one replica and fetches keys from another: each replica making its own CA on
    first start (the default) would refuse the others' client certificates."""
    config = _config(tmp_path)
    spec = _one("Deployment", "sovereign-control-plane")["spec"]
    assert spec["replicas"] > 1
    (mount,) = [m for m in _container()["volumeMounts"] if m["mountPath"] == config.node_ca_dir]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "secret" in volume, "the node CA must come from a Secret, the same for every pod"
