"""The inference runtime: a trained BiSeNet made lean for deployment, behind one small class.

``prepare_for_inference`` copies a segmenter, switches it to eval, folds every BatchNorm into the
convolution that feeds it (eval-mode BatchNorm is a per-channel affine map, so ``conv -> bn``
becomes one conv with rescaled weights and a bias), drops the auxiliary heads (only training
reads them), rearranges the fusion conv so that the context features are mixed before they are
upsampled (``rtda.models.deployed``) and converts it to ``channels_last`` and the requested
precision.
:class:`Segmenter` wraps that model with the pre- and post-processing a user needs: images of any
size and type in, train-id maps (or logits) at the images' own size out.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import rtda_kernels
from rtda.checkpoint_io import load_segmenter
from rtda.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rtda.devices import resolve_device
from rtda.models import OUTPUT_STRIDE, BiSeNet
from rtda.models.bisenet import resize_bilinear
from rtda.models.deployed import DeployedBiSeNet, use_winograd

PRECISIONS: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
# The paper's evaluation resolution (height, width), used when a checkpoint does not say.
DEFAULT_RESOLUTION = (512, 1024)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, each ``BatchNorm2d`` into the ``Conv2d`` registered right before it in the
    same parent module; returns how many were folded. The BatchNorm becomes ``nn.Identity``.

    The rule ("a conv registered immediately before a BatchNorm feeds it") holds for every module
    of RTDA's models (``ConvBNReLU``, the ResNet blocks and stem, the attention refinement
    modules, the downsample branches); the tests check the folded model against the original.
    The model must be in eval mode: folding uses the running statistics.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call model.eval() first)")
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def prepare_for_inference(model: BiSeNet, precision: str = "float32",
                          device: str | torch.device = "cpu",
                          winograd: bool | None = None) -> DeployedBiSeNet:
    """A deployment copy of ``model``: eval mode, BatchNorm folded, auxiliary heads dropped, the
    fusion conv in its cheaper tap form (``DeployedBiSeNet``), ``channels_last``, ``precision``
    and ``device``. The original is left untouched.

    ``winograd`` runs the 3x3 stride-1 convs (most of ResNet's work) through rtda_kernels'
    Winograd F(4x4, 3x3) kernel with the ReLU and residual fused (``use_winograd``); ``None``
    means: where that kernel exists, on CPU in float32. Export passes ``False`` (standard ops).
    """
    dtype = _dtype(precision)
    device = torch.device(device)
    if winograd is None:
        winograd = winograd_available(device, dtype)
    elif winograd and not winograd_available(device, dtype):
        raise ValueError(f"winograd=True needs the compiled CPU kernel, a CPU device and float32; "
                         f"got {device}, {precision}")
    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    lean = DeployedBiSeNet(folded).eval()
    if winograd:
        use_winograd(lean)
    for parameter in lean.parameters():
        parameter.requires_grad_(False)
    return lean.to(device=device, dtype=dtype, memory_format=torch.channels_last)


def winograd_available(device: str | torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether rtda_kernels' Winograd CPU kernel can run a model on ``device`` in ``dtype``."""
    return (torch.device(device).type == "cpu" and dtype == torch.float32
            and rtda_kernels.has_kernel("winograd_conv3x3", "cpu"))


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _resolution(value: Sequence[int] | None, config: dict[str, Any]) -> tuple[int, int]:
    given = value if value is not None else config.get("resolution", DEFAULT_RESOLUTION)
    height, width = (int(v) for v in given)
    if height <= 0 or width <= 0 or height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
        raise ValueError(f"resolution must be (height, width), positive multiples of "
                         f"{OUTPUT_STRIDE}, got {tuple(given)}")
    return height, width


class Segmenter:
    """A trained BiSeNet, ready to segment images.

    ``checkpoint`` is a path to a training checkpoint or a bare state_dict (or an ``nn.Module``
    BiSeNet). Images are resized to ``resolution`` (default: the checkpoint's training
    resolution, else 512x1024), run through the folded model, and the logits resized back to each
    image's size. ``precision`` is ``float32``, ``bfloat16`` or ``float16``; ``compile=True`` runs
    the model under ``torch.compile`` (the first call compiles, once per input shape; at the
    model's own resolution ``predict`` compiles the model and the argmax as one graph).

    Accepted images: an H x W x 3 uint8 RGB NumPy array, a PIL image, a list of either (of any
    sizes), or an N x 3 x H x W tensor (uint8 0-255 or float 0-1, RGB, not normalised).
    """

    def __init__(self, checkpoint: str | os.PathLike | BiSeNet, device: str | torch.device = "cpu",
                 precision: str = "float32", compile: bool = False,
                 resolution: Sequence[int] | None = None, num_classes: int | None = None) -> None:
        self.device = resolve_device(device)
        self.dtype = _dtype(precision)
        if isinstance(checkpoint, BiSeNet):
            model, config = checkpoint, {}
            if num_classes is not None and model.num_classes != num_classes:
                raise ValueError(f"the model predicts {model.num_classes} classes, expected "
                                 f"num_classes={num_classes}")
        else:
            model, config = load_segmenter(checkpoint, num_classes=num_classes)
        self.num_classes = model.num_classes
        self.config = config
        self.resolution = _resolution(resolution, config)
        self.model = prepare_for_inference(model, precision, self.device)
        self._forward = self._compiled(self.model) if compile else self.model
        # At the model's own resolution predict() needs only the argmax: one graph, so that
        # inductor fuses the final upsampling with the argmax instead of writing 19 full maps.
        self._train_ids = self._compiled(self._argmax) if compile else self._argmax

    @staticmethod
    def _compiled(function: Any) -> Any:
        # freezing: inductor treats the weights as constants (folds and prepacks them for oneDNN)
        return torch.compile(function, options={"freezing": True})

    def _argmax(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch).argmax(1).to(torch.uint8)

    # -- public API ---------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, images: Any) -> torch.Tensor | list[torch.Tensor]:
        """Float32 logits at each image's size: N x C x H x W for a tensor batch, C x H x W for
        one image, a list of those for a list of images."""
        batch, sizes, kind = self._batch(images)
        logits = self._forward(batch).float()
        resized = [self._resize_logits(logits[i:i + 1], size)[0] for i, size in enumerate(sizes)]
        if kind == "tensor":
            return torch.stack(resized)
        return resized[0] if kind == "single" else resized

    @torch.inference_mode()
    def predict(self, images: Any) -> np.ndarray | torch.Tensor | list[np.ndarray]:
        """Train-id maps (uint8) at each image's size: an N x H x W tensor for a tensor batch,
        an H x W array for one NumPy/PIL image, a list of arrays for a list."""
        batch, sizes, kind = self._batch(images)
        if all(tuple(size) == self.resolution for size in sizes):
            maps = list(self._train_ids(batch))
        else:
            logits = self._forward(batch).float()
            maps = [self._resize_logits(logits[i:i + 1], size).argmax(1)[0].to(torch.uint8)
                    for i, size in enumerate(sizes)]
        if kind == "tensor":
            return torch.stack(maps)
        arrays = [m.cpu().numpy() for m in maps]
        return arrays[0] if kind == "single" else arrays

    __call__ = predict

    # -- pre- and post-processing ---------------------------------------------------------------
    def _resize_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(logits.shape[2:]) == tuple(size):
            return logits
        return resize_bilinear(logits, size)

    def _batch(self, images: Any) -> tuple[torch.Tensor, list[tuple[int, int]], str]:
        """(normalised N x 3 x h x w batch at the model's resolution, original sizes, kind)."""
        if isinstance(images, torch.Tensor):
            batch, sizes = self._from_tensor(images)
            return self._normalise(batch), sizes, "tensor"
        if isinstance(images, (np.ndarray, Image.Image)):
            images, kind = [images], "single"
        elif isinstance(images, (list, tuple)) and images:
            kind = "list"
        else:
            raise TypeError("images must be an HxWx3 uint8 array, a PIL image, a non-empty list "
                            f"of those, or an Nx3xHxW tensor; got {type(images).__name__}")
        batch, sizes = image_batch(images, self.resolution)
        return self._normalise(batch.to(self.device).float().div_(255)), sizes, kind

    def _from_tensor(self, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """A float 0-1 batch at the model's resolution (bicubic, antialiased), and the sizes."""
        if images.dim() != 4 or images.shape[1] != 3 or 0 in images.shape:
            raise ValueError(f"images must be a non-empty N x 3 x H x W tensor (RGB), got shape "
                             f"{tuple(images.shape)}")
        if images.dtype == torch.uint8:
            batch = images.to(self.device).float().div_(255)
        elif images.is_floating_point():
            batch = images.to(self.device, torch.float32)
        else:
            raise ValueError(f"images must be uint8 (0-255) or floating point (0-1), got "
                             f"{images.dtype}")
        size = tuple(images.shape[2:])
        if size != self.resolution:
            batch = F.interpolate(batch, size=self.resolution, mode="bicubic",
                                  align_corners=False, antialias=True).clamp_(0, 1)
        return batch, [size] * images.shape[0]

    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        return normalise(batch).to(self.dtype).contiguous(memory_format=torch.channels_last)


def _as_pil(image: Any, name: str) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name} must be an H x W x 3 uint8 RGB array, got {image.dtype} "
                             f"of shape {image.shape}")
        image = Image.fromarray(image) if image.size else Image.new("RGB", image.shape[1::-1])
    elif isinstance(image, Image.Image):
        image = image.convert("RGB")
    else:
        raise TypeError(f"{name} must be a NumPy array or a PIL image, got "
                        f"{type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name} is empty ({image.width}x{image.height} pixels)")
    return image


def image_batch(images: Sequence[Any], resolution: tuple[int, int]
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """HxWx3 uint8 arrays or PIL images as one N x 3 x h x w uint8 batch at ``resolution``
    (Pillow bicubic, as the training data is resized), and each image's (height, width)."""
    height, width = resolution
    tensors, sizes = [], []
    for index, image in enumerate(images):
        image = _as_pil(image, f"images[{index}]")
        sizes.append((image.height, image.width))
        if (image.height, image.width) != (height, width):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        tensors.append(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
    return torch.stack(tensors), sizes


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """An N x 3 x H x W RGB batch in 0-1 normalised with the ImageNet mean and std (what the
    models are trained on)."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std
