"""One iteration of the method (Sec. III of the paper), fused or in plain PyTorch.

With a labelled source batch and an unlabelled target batch:

1. the segmenter on the source: cross-entropy of the main output and of the two auxiliary outputs
   (ignore 255), ``L_seg``;
2. the segmenter on the target: the discriminator sees ``P_t = softmax(main output)`` and the
   adversarial loss ``lambda_adv * BCE(D(P_t), source label)`` (Eq. 2) pushes target predictions to
   look like source ones; D's parameters get no gradient from it. ``L_seg + lambda_adv * L_adv``
   is Eq. (3);
3. the discriminator on the detached softmax of both predictions: ``discriminator_loss``
   (Eq. 1);
4. both optimisers step (the caller steps the schedulers).

Self-training (``self_training``, with a teacher; see :mod:`rtda.train.self_training`) adds: the
teacher's pseudo-labels of the target batch, weighted by its confident fraction; with
``class_mix``, half of each source image's classes pasted onto its target image (their pixels
keep the source label and weight 1); the student's weighted cross-entropy on that batch.

``fused=True`` computes both adversarial losses and the self-training loss with ``rtda_kernels``
(the maps upsampled on the fly); ``fused=False`` with ``rtda_kernels.reference``, plain PyTorch
(``F.interpolate``, then ``F.binary_cross_entropy_with_logits`` or ``F.cross_entropy``). The
discriminator itself is fused or not as it was built. Source-only and target-only training run step 1 alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import rtda_kernels
from rtda_kernels import reference
from rtda.train.self_training import EmaTeacher, class_mix_masks, mix

MODES = ("adapt", "source-only", "target-only")
METHODS = ("adversarial", "self-training", "both")  # what "adapt" does


@dataclass(frozen=True)
class StepSettings:
    mode: str = "adapt"
    lambda_adv: float = 0.01
    source_label: float = 0.0
    target_label: float = 1.0
    fused: bool = False
    upsample_map: bool = True  # upsample D's map to the input size in the losses (fcd, fcd_light)
    amp: str = "off"  # off | bf16 | fp16
    adversarial: bool = True  # with mode adapt: the discriminator and Eq. (2)
    self_training: bool = False  # with mode adapt: the teacher's pseudo-labels
    class_mix: bool = True
    pseudo_threshold: float = 0.968


def segmentation_loss(outputs: torch.Tensor | tuple[torch.Tensor, ...],
                      labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies (ignore 255) of the main and the auxiliary outputs."""
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return sum(F.cross_entropy(o.float(), labels, ignore_index=255) for o in outputs)


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class _NoGradFor:
    """Turns off ``requires_grad`` of a module's parameters for a block (they get no gradient,
    and autograd does not even compute one)."""

    def __init__(self, module: nn.Module) -> None:
        self.parameters = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.parameters:
            p.requires_grad_(False)

    def __exit__(self, *exc) -> None:
        for p in self.parameters:
            p.requires_grad_(True)


def self_training_loss(segmenter: nn.Module, teacher: EmaTeacher, source: dict, target: dict,
                       settings: StepSettings, generator: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the student's confidence-weighted cross-entropy on the (mixed) target batch, the mean
    pseudo-label weight). Fused: both models' 1/8 outputs go to ``pseudo_label_loss``, which
    upsamples them on the fly; else the outputs at the input size to its reference."""
    device = target["image"].device
    size = tuple(target["image"].shape[-2:])
    resize = not settings.fused
    with torch.no_grad(), _autocast(device, settings.amp):
        teacher_logits = teacher.model(target["image"], resize=resize)
    image, labels = target["image"], None
    if settings.class_mix:
        masks = class_mix_masks(source["label"], generator)
        image = mix(masks, source["image"], image)
        labels = torch.where(masks, source["label"], reference.PSEUDO_LABEL)
    with _autocast(device, settings.amp):
        main = segmenter(image, resize=resize)[0]
    loss = rtda_kernels.pseudo_label_loss if settings.fused else reference.pseudo_label_loss
    value, weight = loss(main.float(), teacher_logits.float(), labels,
                         threshold=settings.pseudo_threshold, output_size=size)
    return value, weight.mean()


def train_step(segmenter: nn.Module, discriminator: nn.Module | None,
               seg_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer | None,
               source: dict, target: dict | None, settings: StepSettings,
               scaler: torch.amp.GradScaler | None = None, teacher: EmaTeacher | None = None,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """Runs one iteration and returns its losses (``seg``; ``adv``, ``d`` with the adversarial
    term; ``st`` and ``pseudo_weight`` with self-training).

    ``source`` has ``image`` and ``label``; ``target`` has ``image`` (None unless adapting).
    Gradients are zeroed here, optimisers stepped here; schedulers and the teacher's update are
    the caller's. ``generator`` draws ClassMix's classes.
    """
    device = source["image"].device
    scale = scaler.scale if scaler is not None else (lambda loss: loss)
    segmenter.train()
    seg_optimizer.zero_grad(set_to_none=True)
    with _autocast(device, settings.amp):
        source_outputs = segmenter(source["image"])
        loss_seg = segmentation_loss(source_outputs, source["label"])
    scale(loss_seg).backward()
    losses = {"seg": loss_seg.detach()}

    with_adversarial = settings.mode == "adapt" and settings.adversarial
    if with_adversarial:
        if discriminator is None or d_optimizer is None or target is None:
            raise ValueError("the adversarial term needs a discriminator, its optimiser and a "
                             "target batch")
        discriminator.train()
        d_optimizer.zero_grad(set_to_none=True)
        size = tuple(source["image"].shape[-2:]) if settings.upsample_map else None
        adversarial = rtda_kernels.adversarial_loss if settings.fused else (
            reference.adversarial_loss)
        d_loss = rtda_kernels.discriminator_loss if settings.fused else (
            reference.discriminator_loss)
        with _autocast(device, settings.amp):
            target_main = segmenter(target["image"])[0]
        target_prob = torch.softmax(target_main.float(), dim=1)
        plain_d = getattr(discriminator, "module", discriminator)  # past a DDP wrapper: no sync
        with _NoGradFor(plain_d):
            loss_adv = adversarial(plain_d(target_prob), settings.source_label, output_size=size)
        scale(settings.lambda_adv * loss_adv).backward()
        source_prob = torch.softmax(source_outputs[0].detach().float(), dim=1)
        # one forward over both batches (D has no batch statistics), so that a
        # DistributedDataParallel D sees one forward per backward
        both = discriminator(torch.cat([source_prob, target_prob.detach()]))
        d_source, d_target = both.split([source_prob.shape[0], target_prob.shape[0]])
        loss_d = d_loss(d_source, d_target, source_label=settings.source_label,
                        target_label=settings.target_label, output_size=size)
        scale(loss_d).backward()
        losses.update(adv=loss_adv.detach(), d=loss_d.detach())

    if settings.mode == "adapt" and settings.self_training:
        if teacher is None or target is None or generator is None:
            raise ValueError("self-training needs a teacher, a target batch and a generator")
        loss_st, weight = self_training_loss(segmenter, teacher, source, target, settings,
                                             generator)
        scale(loss_st).backward()
        losses.update(st=loss_st.detach(), pseudo_weight=weight)

    optimizers = [seg_optimizer] + ([d_optimizer] if with_adversarial else [])
    for optimizer in optimizers:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
    if scaler is not None:
        scaler.update()
    return {name: float(value) for name, value in losses.items()}
