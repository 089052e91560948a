"""``fuse_dwsep``: swap the depthwise-separable runs of an existing model for the fused op, keeping
the model's state_dict keys, and say what was fused and what was not (a ``FusionReport``).

A run, inside an ``nn.Sequential``, is a depthwise ``Conv2d``, an optional ``BatchNorm2d``, a 1x1
``Conv2d``, an optional ``BatchNorm2d`` and an optional activation. ``dwsep_conv2d`` applies one
activation (LeakyReLU with slope >= 0, ReLU = slope 0), after the pointwise conv only.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from rtda_kernels.functional import dwsep_conv2d
from rtda_kernels.nn.dwsep_conv2d import DepthwiseSeparableConv2d

_log = logging.getLogger(__name__)

# Modules recognised as activations, to name them in reasons and to spot one between the convs.
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
)


class FusedSeparableConv2d(DepthwiseSeparableConv2d):
    """A run found by ``fuse_dwsep``: ``act(pointwise_bn(pointwise(depthwise_bn(depthwise(x)))))``.

    Holds the run's original modules (same parameter and buffer objects). With ``fused=True`` and
    every BatchNorm in eval mode, the BatchNorms are folded into the conv weights and biases at
    each forward (so weights loaded later are used) and the fused op runs; in training mode a BN
    run computes exactly the unfused modules (batch statistics, running-stat updates).
    ``plain_names`` maps each held module to the name it had in its parent, which the parent's
    state_dict hooks use to keep the original keys.
    """

    def __init__(
        self,
        depthwise: nn.Conv2d,
        pointwise: nn.Conv2d,
        *,
        padding: int,
        depthwise_bn: nn.BatchNorm2d | None = None,
        pointwise_bn: nn.BatchNorm2d | None = None,
        negative_slope: float | None = None,
        plain_names: dict[str, str] | None = None,
    ) -> None:
        nn.Module.__init__(self)
        # Registered in this order, so the keys come out in the order of the original run.
        self.register_module("depthwise", depthwise)
        self.register_module("depthwise_bn", depthwise_bn)
        self.register_module("pointwise", pointwise)
        self.register_module("pointwise_bn", pointwise_bn)
        self.negative_slope = negative_slope
        self.fused = True
        self.stride = depthwise.stride[0]
        self.padding = padding
        self.plain_names = dict(plain_names or {})

    def _batchnorm_in_training(self) -> bool:
        return any(bn is not None and bn.training for bn in (self.depthwise_bn, self.pointwise_bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused or self._batchnorm_in_training():
            y = self.depthwise(x)
            y = y if self.depthwise_bn is None else self.depthwise_bn(y)
            y = self.pointwise(y)
            y = y if self.pointwise_bn is None else self.pointwise_bn(y)
            slope = self.negative_slope
            return y if slope is None else nn.functional.leaky_relu(y, slope)
        dw_weight, dw_bias = _folded(self.depthwise, self.depthwise_bn)
        pw_weight, pw_bias = _folded(self.pointwise, self.pointwise_bn)
        return dwsep_conv2d(
            x, dw_weight, dw_bias, pw_weight, pw_bias,
            stride=self.stride, padding=self.padding, negative_slope=self.negative_slope,
        )

    def extra_repr(self) -> str:
        return f"stride={self.stride}, padding={self.padding}, " + super().extra_repr()


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of ``bn(conv(x))`` as one conv (eval-mode BatchNorm)."""
    if bn is None:
        return conv.weight, conv.bias
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = shift * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def _key_renames(parent: nn.Module) -> list[tuple[str, str]]:
    """(``<fused child>.<held module>.``, ``<original name>.``) for each fused child of parent."""
    renames = []
    for name, child in parent._modules.items():
        if isinstance(child, FusedSeparableConv2d):
            for attr, plain in child.plain_names.items():
                if child._modules.get(attr) is not None:
                    renames.append((f"{name}.{attr}.", f"{plain}."))
    return renames


class _SavePlainKeys:
    """state_dict post-hook of a container with fused runs: writes the original keys, in the
    original order (a plain class, not a closure, so that models still pickle)."""

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        renames = [(prefix + a, prefix + b) for a, b in _key_renames(module)]
        if not renames:
            return
        order = {name: i for i, name in enumerate(module._modules)}
        moved = []
        for key in [k for k in state_dict if k.startswith(prefix)]:
            value = state_dict.pop(key)
            for fused, plain in renames:
                if key.startswith(fused):
                    key = plain + key[len(fused):]
                    break
            moved.append((key, value))
        moved.sort(key=lambda kv: order.get(kv[0][len(prefix):].split(".", 1)[0], -1))
        state_dict.update(moved)
        metadata = getattr(state_dict, "_metadata", None)
        if metadata is not None:
            for key in list(metadata):
                for fused, plain in renames:
                    if key + "." == fused:
                        metadata[plain[:-1]] = metadata.pop(key)


class _LoadPlainKeys:
    """load_state_dict pre-hook of a container with fused runs: takes the original keys (and,
    unchanged, keys already in the fused layout)."""

    def __call__(self, module, state_dict, prefix, *_) -> None:
        renames = [(prefix + a, prefix + b) for a, b in _key_renames(module)]
        for key in [k for k in state_dict if k.startswith(prefix)]:
            for fused, plain in renames:
                leaf = key[len(plain):]
                # Conv2d and BatchNorm2d keys are direct ("weight", "running_mean"): a deeper key
                # such as "<i>.depthwise.weight" is already in the fused layout.
                if key.startswith(plain) and "." not in leaf:
                    state_dict[fused + leaf] = state_dict.pop(key)
                    break


def _keep_plain_keys(parent: nn.Module) -> None:
    if not getattr(parent, "_rtda_plain_keys", False):
        parent.register_state_dict_post_hook(_SavePlainKeys())
        parent.register_load_state_dict_pre_hook(_LoadPlainKeys())
        parent._rtda_plain_keys = True


@dataclass(frozen=True)
class FusionEntry:
    """One run: the qualified names of its modules, and why it was skipped (or, for a fused
    run, what was left outside the fused op; empty when the whole run was fused)."""

    modules: tuple[str, ...]
    detail: str = ""


@dataclass
class FusionReport:
    """What ``fuse_dwsep`` did to ``model`` (which it changed in place)."""

    model: nn.Module
    fused: list[FusionEntry] = field(default_factory=list)
    skipped: list[FusionEntry] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fuse_dwsep: {len(self.fused)} fused, {len(self.skipped)} skipped"]
        for tag, entries in (("fused", self.fused), ("skipped", self.skipped)):
            for entry in entries:
                detail = f": {entry.detail}" if entry.detail else ""
                lines.append(f"  {tag} {', '.join(entry.modules)}{detail}")
        return "\n".join(lines)


def _is_depthwise_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups >= 1


def _is_1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)


def _depthwise_problem(m: nn.Conv2d) -> tuple[str | None, int]:
    """(why the op cannot compute this depthwise conv or None, its padding)."""
    k = m.kernel_size[0]
    if type(m) is not nn.Conv2d:
        return f"{type(m).__name__} is not nn.Conv2d", 0
    if m.out_channels != m.in_channels:
        return (
            f"depthwise multiplier {m.out_channels // m.in_channels} (out_channels "
            f"{m.out_channels} != in_channels {m.in_channels}): dwsep_conv2d needs them equal"
        ), 0
    if m.kernel_size[0] != m.kernel_size[1]:
        return f"depthwise kernel_size {m.kernel_size} is not square", 0
    if m.stride[0] != m.stride[1]:
        return f"depthwise stride {m.stride} is not the same on both axes", 0
    if m.dilation != (1, 1):
        return f"depthwise dilation {m.dilation}: dwsep_conv2d has no dilation", 0
    if m.padding_mode != "zeros":
        return f"depthwise padding_mode {m.padding_mode!r}: dwsep_conv2d pads with zeros", 0
    if m.padding == "valid":
        return None, 0
    if m.padding == "same":
        if k % 2 == 0:
            return f"padding='same' with the even kernel {k} pads asymmetrically", 0
        return None, (k - 1) // 2
    if m.padding[0] != m.padding[1]:
        return f"depthwise padding {m.padding} is not the same on both axes", 0
    if m.padding[0] >= k:
        return f"depthwise padding {m.padding[0]} >= kernel size {k}: dwsep_conv2d needs padding < k", 0
    return None, m.padding[0]


def _pointwise_problem(m: nn.Conv2d, channels: int) -> str | None:
    if type(m) is not nn.Conv2d:
        return f"{type(m).__name__} is not nn.Conv2d"
    if m.in_channels != channels:
        return f"pointwise in_channels {m.in_channels} != depthwise channels {channels}"
    if m.groups != 1:
        return f"pointwise groups={m.groups}: dwsep_conv2d's pointwise conv is dense"
    if m.stride != (1, 1):
        return f"pointwise stride {m.stride}: dwsep_conv2d's pointwise conv has stride 1"
    if m.padding not in ((0, 0), "valid", "same"):
        return f"pointwise padding {m.padding}: dwsep_conv2d's pointwise conv has no padding"
    return None


def _batchnorm_problem(bn: nn.BatchNorm2d) -> str | None:
    if bn.training:
        return (
            "BatchNorm2d in training mode: BatchNorm is folded only in eval mode "
            "(call model.eval() before fuse_dwsep)"
        )
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return "BatchNorm2d without running statistics (track_running_stats=False) cannot be folded"
    return None


def _activation_slope(m: nn.Module) -> tuple[float | None, str]:
    """(the slope the op applies for activation m, or None; why m stays outside the op)."""
    if type(m) is nn.ReLU:
        return 0.0, ""
    if type(m) is nn.LeakyReLU:
        if m.negative_slope >= 0:
            return float(m.negative_slope), ""
        return None, f"LeakyReLU slope {m.negative_slope} < 0 not supported by dwsep_conv2d"
    return None, f"activation {type(m).__name__} not supported by dwsep_conv2d"


def _fuse_sequential(seq: nn.Sequential, prefix: str, report: FusionReport) -> None:
    """Replace each run by a ``FusedSeparableConv2d`` at the run's first index and
    ``nn.Identity`` at the others (later indices and the state_dict keys do not move)."""
    names = list(seq._modules)
    mods = [seq._modules[n] for n in names]

    def at(j: int) -> nn.Module | None:
        return mods[j] if j < len(mods) else None

    i = 0
    while i < len(mods):
        if not _is_depthwise_like(mods[i]):
            i += 1
            continue
        j = i + 1
        bn1 = at(j) if type(at(j)) is nn.BatchNorm2d else None
        j += bn1 is not None
        between = at(j) if isinstance(at(j), _ACTIVATIONS) else None
        if between is not None:
            k = j + 1 + (type(at(j + 1)) is nn.BatchNorm2d)
            if _is_1x1(at(k)):
                run = tuple(prefix + n for n in names[i : k + 1])
                report.skipped.append(FusionEntry(run, (
                    f"activation {type(between).__name__} between the depthwise and the pointwise "
                    "conv: dwsep_conv2d applies its activation after the pointwise conv only"
                )))
                i = k + 1
                continue
            i += 1
            continue
        if not _is_1x1(at(j)):
            i += 1
            continue
        dw, pw, pw_index = mods[i], mods[j], j
        j += 1
        bn2 = at(j) if type(at(j)) is nn.BatchNorm2d else None
        j += bn2 is not None
        act = at(j) if isinstance(at(j), _ACTIVATIONS) else None
        slope, note = _activation_slope(act) if act is not None else (None, "")
        end = j + 1 if slope is not None else j  # one past the run's last fused module
        problem, padding = _depthwise_problem(dw)
        problem = problem or _pointwise_problem(pw, dw.out_channels)
        for bn in (bn1, bn2):
            problem = problem or (None if bn is None else _batchnorm_problem(bn))
        if problem is not None:
            last = j + 1 if act is not None else j
            report.skipped.append(FusionEntry(tuple(prefix + n for n in names[i:last]), problem))
            i = pw_index + 1
            continue
        plain = {"depthwise": names[i], "pointwise": names[pw_index]}
        if bn1 is not None:
            plain["depthwise_bn"] = names[i + 1]
        if bn2 is not None:
            plain["pointwise_bn"] = names[pw_index + 1]
        fused = FusedSeparableConv2d(
            dw, pw, padding=padding, depthwise_bn=bn1, pointwise_bn=bn2,
            negative_slope=slope, plain_names=plain,
        )
        setattr(seq, names[i], fused)
        for n in names[i + 1 : end]:
            setattr(seq, n, nn.Identity())
        if note:
            note += f": {prefix + names[j]} kept as a separate module after the fused convs"
        report.fused.append(FusionEntry(tuple(prefix + n for n in names[i:end]), note))
        _keep_plain_keys(seq)
        i = end


def fuse_dwsep(model: nn.Module) -> FusionReport:
    """Switch ``model`` (in place) to the fused ``dwsep_conv2d`` op wherever it can, and report.

    * ``DepthwiseSeparableConv2d`` modules with ``fused=False`` are switched to ``fused=True``.
    * In every ``nn.Sequential``, a run of a depthwise ``Conv2d`` (groups == in == out channels,
      square kernel and stride, no dilation, symmetric zero padding < kernel, or "same" with an
      odd kernel), an optional ``BatchNorm2d``, a 1x1 ``Conv2d`` (stride 1, groups 1), an
      optional ``BatchNorm2d`` and an optional ``ReLU`` / ``LeakyReLU`` (slope >= 0) becomes
      one ``FusedSeparableConv2d`` at the run's first index, ``nn.Identity`` at the others. Any
      other activation (ReLU6, Hardswish, ...) stays a separate module after the fused convs.
    * A run with a BatchNorm is fused only when its BatchNorms are in eval mode: fuse for
      inference after loading the weights and calling ``model.eval()``. If the model is put
      back in training mode, such a run computes the unfused modules again (exact).
    * The state_dict keeps the plain model's keys, in order, both ways: a plain model's
      checkpoint loads into the fused model with ``strict=True`` and the fused model's into the
      plain one, BatchNorm buffers included (BN is folded at forward time, never into the
      stored weights). Parameter objects are shared with the original modules; the names that
      ``named_parameters()`` gives change (``<i>.depthwise.weight``).
    * Runs the op cannot compute (dilation, depthwise multiplier, an activation between the two
      convs as in MobileNet v1/v2 blocks, BatchNorm in training mode, ...) are left unchanged
      and listed in ``report.skipped`` with the reason. Only ``nn.Sequential`` children are
      searched: a custom ``forward`` cannot be rewritten.

    Returns a ``FusionReport`` (``.model``, ``.fused``, ``.skipped``; ``str()`` for a summary),
    also logged to the ``rtda_kernels.nn.fusion`` logger at INFO level.
    """
    report = FusionReport(model)
    for name, module in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        if isinstance(module, DepthwiseSeparableConv2d):
            if not module.fused:
                module.fused = True
                report.fused.append(FusionEntry((name,), "DepthwiseSeparableConv2d set to fused=True"))
        elif isinstance(module, nn.Sequential):
            _fuse_sequential(module, prefix, report)
    _log.info("%s", report)
    return report


def fuse_modules(model: nn.Module) -> nn.Module:
    """Deprecated alias of ``fuse_dwsep`` that returns the model (the name shadowed
    ``torch.ao.quantization.fuse_modules``)."""
    warnings.warn(
        "rtda_kernels.nn.fuse_modules is deprecated: use rtda_kernels.nn.fuse_dwsep, which "
        "returns a FusionReport (the fused model is its .model)",
        DeprecationWarning,
        stacklevel=2,
    )
    return fuse_dwsep(model).model
