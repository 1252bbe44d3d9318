"""torchkeeper: keeps a newer CUDA runtime, cuBLAS and cuDNN overlaid on PyTorch."""

__version__ = "0.1.0"
