"""lightning_mem: memorization vs generalization under the scale of initialization."""

__version__ = "0.1.0"
