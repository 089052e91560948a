"""Models of RTDA: the BiSeNet segmenter on a ResNet backbone and the three discriminators."""

from __future__ import annotations

from rtda.models.bisenet import OUTPUT_STRIDE, BiSeNet
from rtda.models.discriminators import DISCRIMINATORS, Discriminator, build_discriminator
from rtda.models.resnet import ARCHITECTURES, ResNet, load_backbone_state, load_pretrained

BACKBONES = tuple(ARCHITECTURES)


def build_segmenter(backbone: str = "resnet101", num_classes: int = 19,
                    pretrained: str | None = None) -> BiSeNet:
    """BiSeNet on ``backbone``; ``pretrained`` is the path of a local torchvision ImageNet
    checkpoint for the backbone (never downloaded)."""
    model = BiSeNet(backbone, num_classes)
    if pretrained is not None:
        load_pretrained(model.context_path, pretrained)
    return model


__all__ = [
    "BACKBONES",
    "DISCRIMINATORS",
    "OUTPUT_STRIDE",
    "BiSeNet",
    "Discriminator",
    "ResNet",
    "build_discriminator",
    "build_segmenter",
    "load_backbone_state",
    "load_pretrained",
]
