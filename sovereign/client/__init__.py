"""The typed operator client: ``AdminClient`` and ``AuditClient`` over the control plane's operator
endpoint. The only place on the operator side (CLI, demo, benchmarks) that sees the generated Admin and
Audit protobuf types: requests are built here from plain values, replies come back as the frozen
records of ``records`` and failures as one ``OperatorError`` carrying the server's code."""

from sovereign.client.admin import AdminClient
from sovereign.client.audit import AuditClient
from sovereign.client.channel import operator_channel
from sovereign.client.errors import OperatorError
from sovereign.client.wire import to_json

__all__ = ["AdminClient", "AuditClient", "OperatorError", "operator_channel", "to_json"]
