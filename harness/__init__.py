"""MoE compression harness: calibrate, compress (prune or merge experts), serve, evaluate."""

__version__ = "0.1.0"
