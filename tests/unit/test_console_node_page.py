"""The console's node page, rendered from an Admin ``Node`` reply as the server sends it (the backend's
``node_out`` and the page's template, no browser): a node with GPUs gets a table of them, one row per GPU
with the claims the server verified; a node without GPUs gets none, and the claims table never shows the
GPU list as text."""

from __future__ import annotations

from typing import Any

import lxml.html

from proto.sovereign.v1 import admin_pb2, attestation_pb2, common_pb2
from sovereign.console.app import template_environment
from sovereign.console.backend import node_out

H100 = attestation_pb2.GpuSummary(
    architecture="HOPPER", driver_version="550.54.15", vbios_version="96.00.9F.00.01", ueid="a1" * 8,
    measurement_result="success", cc_mode="on", revocation="good", simulated=True,
)  # fmt: skip
SECOND = attestation_pb2.GpuSummary(
    architecture="HOPPER", driver_version="550.54.15", vbios_version="96.00.9F.00.02", ueid="b2" * 8,
    measurement_result="success", cc_mode="on", revocation="not-checked",
)  # fmt: skip


def _page(gpus: list[attestation_pb2.GpuSummary]) -> Any:
    node = admin_pb2.Node(
        node_id="n1",
        node_name="gpu-trainer",
        state=common_pb2.NODE_STATE_ATTESTED,
        claims=attestation_pb2.ClaimsSummary(
            tee=common_pb2.TEE_SNP, product="Genoa", measurement=b"\x03" * 48, gpus=gpus
        ),
    )
    html = (
        template_environment()
        .get_template("node.html")
        .render(session=None, allowed={}, node=node_out(node), history=None)
    )
    return lxml.html.fromstring(html)


def _claims_text(page: Any) -> str:
    return " ".join(page.xpath("//h2[.='Claims']/following-sibling::table[1]//text()"))


def test_a_node_with_two_gpus_shows_a_row_for_each() -> None:
    page = _page([H100, SECOND])
    (table,) = page.xpath("//table[@id='gpus']")
    header, *rows = [[cell.text_content() for cell in row] for row in table.xpath(".//tr")]
    assert header == [
        "architecture", "driver", "VBIOS", "UEID", "measurements", "CC mode", "revocation", "simulated"
    ]  # fmt: skip
    assert rows == [
        ["HOPPER", "550.54.15", "96.00.9F.00.01", "a1" * 8, "success", "on", "good", "yes"],
        ["HOPPER", "550.54.15", "96.00.9F.00.02", "b2" * 8, "success", "on", "not-checked", "no"],
    ]
    claims = _claims_text(page)
    assert "03" * 48 in claims and "gpus" not in claims and "HOPPER" not in claims


def test_a_node_without_gpus_has_no_gpu_table() -> None:
    page = _page([])
    assert page.xpath("//table[@id='gpus']") == [] and page.xpath("//h2[.='GPUs']") == []
    assert "03" * 48 in _claims_text(page)


def test_a_tdx_nodes_rtmrs_show_as_hex() -> None:
    rtmrs = [bytes([i]) * 48 for i in range(4)]
    node = admin_pb2.Node(
        node_id="n2",
        node_name="tdx-trainer",
        state=common_pb2.NODE_STATE_ATTESTED,
        claims=attestation_pb2.ClaimsSummary(tee=common_pb2.TEE_TDX, measurement=b"\x07" * 48, rtmrs=rtmrs),
    )
    assert node_out(node)["claims"]["rtmrs"] == " ".join(r.hex() for r in rtmrs)
    html = (
        template_environment()
        .get_template("node.html")
        .render(session=None, allowed={}, node=node_out(node), history=None)
    )
    claims = _claims_text(lxml.html.fromstring(html))
    assert "03" * 48 in claims and "b'" not in claims and "\\\\x" not in claims
