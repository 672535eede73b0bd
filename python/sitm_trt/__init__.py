"""sitm-trt: stack-based inverse tone mapping (CVPR 2023) with C++/CUDA kernels and TensorRT engines."""

__version__ = "0.1.0"
