"""Plain PyTorch implementations of every op: the source of truth for tests, benchmarks and the
``reference`` backend. They materialise every intermediate and rely on PyTorch's autograd."""

from rtda_kernels.reference.adversarial_loss import adversarial_loss, discriminator_loss
from rtda_kernels.reference.dwsep_conv2d import dwsep_conv2d
from rtda_kernels.reference.pseudo_label_loss import IGNORE_LABEL, PSEUDO_LABEL, pseudo_label_loss
from rtda_kernels.reference.winograd_conv3x3 import winograd_conv3x3, winograd_weight

__all__ = [
    "IGNORE_LABEL", "PSEUDO_LABEL",
    "adversarial_loss", "discriminator_loss", "dwsep_conv2d", "pseudo_label_loss", "winograd_conv3x3",
    "winograd_weight",
]
