"""neocaffe: Caffe models, files and research scripts on PyTorch with Caffe's exact numerics."""

__version__ = "0.1.0"
