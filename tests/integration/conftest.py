"""Fixtures of the cluster-facing integration tests (helpers live in ray_heads.py)."""

from ray_heads import jobs_head, start_head

__all__ = ["jobs_head", "start_head"]
