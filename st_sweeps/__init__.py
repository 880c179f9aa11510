"""st_sweeps: train, sweep and reproduce score-based diffusion models with Soft Truncation."""

__version__ = "0.1.0"
