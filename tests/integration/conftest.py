"""Fixtures of the cluster-facing integration tests (helpers live in ray_heads.py)."""

from ray_heads import start_head

__all__ = ["start_head"]
