"""lightning_seg: a PyTorch Lightning research framework for dense prediction."""

__version__ = "0.1.0"
