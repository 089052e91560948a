"""torch.library registration glue, one module per op: fake kernels, autograd, Triton ops."""
