"""rtda_kernels: fused kernels for real-time domain adaptation, registered as torch.library ops.

    import rtda_kernels
    y = rtda_kernels.dwsep_conv2d(x, dw_w, dw_b, pw_w, pw_b, stride=2, padding=1, negative_slope=0.2)
    loss = rtda_kernels.adversarial_loss(d_map, 1.0, output_size=(512, 1024))

For inference on CPU, ``winograd_conv3x3`` runs a 3x3 stride-1 convolution by Winograd
F(4x4, 3x3) (weights from ``winograd_weight``; module ``nn.WinogradConv2d``).

Backends: ``reference`` (plain PyTorch), ``cpu`` (C++), ``triton`` and ``cuda``; see
``available_backends()``, ``has_kernel(op, backend)`` and ``use_backend()``.
"""

from rtda_kernels import _extension  # noqa: F401  (loads the compiled ops first)
from rtda_kernels import nn, reference
from rtda_kernels.backends import (
    BACKENDS,
    available_backends,
    has_kernel,
    select_backend,
    use_backend,
)
from rtda_kernels.functional import (
    adversarial_loss,
    discriminator_loss,
    dwsep_conv2d,
    pseudo_label_loss,
    winograd_conv3x3,
)
from rtda_kernels.reference.winograd_conv3x3 import winograd_weight

__all__ = [
    "BACKENDS",
    "adversarial_loss",
    "available_backends",
    "discriminator_loss",
    "dwsep_conv2d",
    "has_kernel",
    "nn",
    "pseudo_label_loss",
    "reference",
    "select_backend",
    "use_backend",
    "winograd_conv3x3",
    "winograd_weight",
]
__version__ = "0.1.0"
