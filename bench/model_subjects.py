"""The models' benchmark subjects: the paper's three discriminators.

Built like ``bench.subjects`` (a ``Subject`` with one callable per provider, timed through
``make_case``): ``eager`` is the model with plain PyTorch layers as a user writes them
(``bench.subjects.plain_pytorch``: LeakyReLU in place, as ``fcd`` has it), ``compile`` its
``torch.compile``, ``fused`` the same weights with the ``rtda_kernels`` layers on the C++
backend. ``fcd`` has no depthwise-separable layer, so it has no ``fused`` provider. BiSeNet
inference is benchmarked in ``bench/test_inference.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from bench.subjects import Subject, compiled, on_cpu_backend, plain_pytorch
from rtda.models import DISCRIMINATORS, build_discriminator

# The paper's training shape at the discriminator (batch 4, softmax of 19 classes, 512x1024);
# smoke runs use the small one.
DISCRIMINATOR_SHAPE = (4, 19, 512, 1024)
DISCRIMINATOR_SMOKE_SHAPE = (1, 19, 64, 64)


def build_discriminator_subject(name: str, seed: int = 0) -> Subject:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        eager = plain_pytorch(build_discriminator(name, fused=False))
    models = {"eager": eager, "compile": compiled(eager)}
    parameters = list(eager.parameters())
    if name != "fcd":
        fused = build_discriminator(name, fused=True)
        fused.load_state_dict(eager.state_dict())
        models["fused"] = on_cpu_backend(fused)
        parameters += list(fused.parameters())
    return Subject(name, models, parameters)


class ModelBench(NamedTuple):
    """How one model subject is benchmarked."""

    build: Callable[[], Subject]
    passes: tuple[str, ...]
    shape: tuple[int, ...]
    smoke_shape: tuple[int, ...]
    providers: tuple[str, ...]


MODEL_SUBJECTS: dict[str, ModelBench] = {
    **{name: ModelBench(lambda name=name: build_discriminator_subject(name), ("fwd", "fwd+bwd"),
                        DISCRIMINATOR_SHAPE, DISCRIMINATOR_SMOKE_SHAPE,
                        ("eager", "compile") if name == "fcd" else ("eager", "compile", "fused"))
       for name in DISCRIMINATORS},
}
