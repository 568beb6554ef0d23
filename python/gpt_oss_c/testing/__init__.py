"""Test support: synthetic gpt-oss checkpoints in both real layouts (see synthetic.py)."""

from .synthetic import synthetic_config, write_synthetic_checkpoint

__all__ = ["synthetic_config", "write_synthetic_checkpoint"]
