"""``WinogradConv2d``: an inference-time stand-in for a 3x3 stride-1 ``nn.Conv2d`` that runs the
Winograd F(4x4, 3x3) op, with an optional fused residual add and ReLU."""

from __future__ import annotations

import torch
from torch import nn

from rtda_kernels.functional import winograd_conv3x3
from rtda_kernels.reference.winograd_conv3x3 import winograd_weight


def _refresh_after_load(module: WinogradConv2d, incompatible_keys) -> None:
    module.refresh()


class WinogradConv2d(nn.Module):
    """``relu(conv(x) + residual)`` (the ReLU if ``relu``, the residual if given) for a
    3x3, stride 1, padding 1, dilation 1, ungrouped conv; inference only.

    Built from the conv with :meth:`from_conv`; it shares the conv's ``weight`` and ``bias``, so
    the state_dict has the conv's keys, and keeps their Winograd form in a buffer that is not
    saved and is recomputed by :meth:`refresh` (called after ``load_state_dict``). Call
    :meth:`refresh` yourself after changing the weights in place.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 relu: bool = False) -> None:
        super().__init__()
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
            raise ValueError(f"weight must be C_out x C_in x 3 x 3, got {tuple(weight.shape)}")
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)
        self.relu = relu
        self.register_buffer("weight_winograd", winograd_weight(self.weight.detach()),
                             persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        """Whether ``conv`` is an ``nn.Conv2d`` this module can stand in for."""
        return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool = False) -> WinogradConv2d:
        if not cls.supports(conv):
            raise ValueError(f"WinogradConv2d stands in for a 3x3, stride 1, padding 1, "
                             f"ungrouped, zero-padded nn.Conv2d; got {conv}")
        return cls(conv.weight, conv.bias, relu)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the Winograd form of ``weight`` (in its current dtype and device)."""
        self.weight_winograd = winograd_weight(self.weight.detach())

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return winograd_conv3x3(x, self.weight, self.bias, residual, relu=self.relu,
                                weight_winograd=self.weight_winograd)

    def extra_repr(self) -> str:
        c_out, c_in = self.weight.shape[:2]
        return f"{c_in}, {c_out}, kernel_size=(3, 3), padding=(1, 1), relu={self.relu}"
