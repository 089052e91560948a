"""Plain PyTorch implementations of every op: the source of truth for tests, benchmarks and the
``reference`` backend. They materialise every intermediate and rely on PyTorch's autograd."""

from rtda_kernels.reference.dwsep_conv2d import dwsep_conv2d

__all__ = ["dwsep_conv2d"]
