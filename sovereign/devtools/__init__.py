"""Developer tooling outside the product: the harness that starts real OpenBao servers and raft clusters."""
