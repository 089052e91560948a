"""Triton kernels, one file per op; imported lazily so TRITON_INTERPRET is read at first use."""
