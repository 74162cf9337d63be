"""Policies shipped with sovereign: default.toml (production-like) and demo.toml (simulated nodes)."""
