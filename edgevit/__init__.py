"""edgevit: Vision Transformers from PyTorch to validated INT8 on edge devices."""

__version__ = "0.1.0"
