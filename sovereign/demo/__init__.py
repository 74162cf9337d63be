"""Demonstrations run by ``./dev demo``: orchestration only, every decision made by the real code."""
