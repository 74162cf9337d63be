"""The web console: a read-mostly view of the control plane for operators and auditors.

Served by ``sovereign serve --console-listen`` on its own HTTPS listener in the server's event loop.
It signs people in with the realm (authorization code + PKCE), keeps their access token server-side
(the browser holds only an opaque session id), and reads and acts through the operator gRPC port with
that token, so every role check, the two-person rule and the audit entries are the ones the CLI meets.
"""
