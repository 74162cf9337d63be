"""Soak and fault injection: the whole stack under mixed load while things go wrong, judged by an invariant checker (dev tooling, outside the request path)."""
