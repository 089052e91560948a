"""BiSeNet inference, image in -> train-id map out: the training model vs the runtime vs ONNX.

BiSeNet-R18 and -R101 (random weights; speed does not depend on them) on one 3 x 512 x 1024
image in 0-1, batch 1, float32. Every provider normalises the image, runs the model and takes the
argmax:

- ``eager``: the training model (``rtda.models.BiSeNet``) in eval mode;
- ``compile``: ``torch.compile`` of that model;
- ``runtime``: ``rtda.runtime.Segmenter`` (BatchNorm folded, auxiliary heads dropped, tap-form
  fusion conv, channels_last, the 3x3 stride-1 convs on rtda_kernels' Winograd kernel), eager;
- ``runtime-compile``: the same with ``compile=True`` (inductor, weights frozen);
- ``onnxruntime``: the runtime's model, with direct convs (ONNX has no Winograd op), exported by
  ``rtda.export`` and run by onnxruntime (its default threads), the argmax in PyTorch.

Groups read ``"bisenet_resnet18 inference (1,3,512,1024)"``. With ``--benchmark-disable`` (the
smoke run) only R18 runs, at 1 x 3 x 64 x 64. Each provider's map is checked against eager once,
at the timed shape, before it is timed.

    pytest bench/test_inference.py --benchmark-only                  # a few minutes here
    pytest bench/test_inference.py --benchmark-only -k resnet18
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rtda.models import build_segmenter
from rtda.runtime import Segmenter, normalise

SHAPE, SMOKE_SHAPE = (1, 3, 512, 1024), (1, 3, 64, 64)
BACKBONES, SMOKE_BACKBONES = ("resnet18", "resnet101"), ("resnet18",)
PROVIDERS = ("eager", "compile", "runtime", "runtime-compile", "onnxruntime")
ROUNDS = {"resnet18": 7, "resnet101": 3}

Predict = Callable[[torch.Tensor], torch.Tensor]
_models: dict[str, torch.nn.Module] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_inference":
        return
    smoke = metafunc.config.getoption("benchmark_disable", default=False)
    params = [pytest.param(backbone, SMOKE_SHAPE if smoke else SHAPE, provider,
                           id=f"{backbone}-{provider}")
              for backbone in (SMOKE_BACKBONES if smoke else BACKBONES)
              for provider in PROVIDERS]
    metafunc.parametrize("backbone,shape,provider", params)


def _model(backbone: str) -> torch.nn.Module:
    if backbone not in _models:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            _models[backbone] = build_segmenter(backbone).eval()
    return _models[backbone]


def _onnxruntime(model: torch.nn.Module, shape: tuple[int, ...]) -> Predict:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rtda.export import export_onnx
    from rtda.runtime import prepare_for_inference

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(prepare_for_inference(model, winograd=False), torch.zeros(shape), path,
                    input_name="image", output_name="logits")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def predict(x: torch.Tensor) -> torch.Tensor:
        logits = session.run(None, {"image": normalise(x).numpy()})[0]
        return torch.from_numpy(logits).argmax(1)

    return predict


def build_provider(provider: str, backbone: str, shape: tuple[int, ...]) -> Predict:
    """The image -> train-id map callable of one provider."""
    model = _model(backbone)
    if provider in ("eager", "compile"):
        net = model if provider == "eager" else torch.compile(model, dynamic=False)
        return lambda x: net(normalise(x)).argmax(1)
    if provider in ("runtime", "runtime-compile"):
        segmenter = Segmenter(model, resolution=shape[2:], compile=provider == "runtime-compile")
        return segmenter.predict
    if provider == "onnxruntime":
        return _onnxruntime(model, shape)
    raise ValueError(f"unknown provider {provider!r}")


@torch.inference_mode()
def test_inference(benchmark, backbone: str, shape, provider: str) -> None:
    benchmark.group = f"bisenet_{backbone} inference ({','.join(map(str, shape))})"
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    predict = build_provider(provider, backbone, shape)
    train_ids = predict(image)  # warm-up: compiles, prepacks, allocates
    assert train_ids.shape == (shape[0], *shape[2:])
    if provider != "eager":  # checked once at the timed shape
        expected = _model(backbone)(normalise(image)).argmax(1)
        assert (train_ids.long() == expected).float().mean() > 0.99
    rounds = 1 if benchmark.disabled else ROUNDS[backbone]
    benchmark.pedantic(predict, args=(image,), rounds=rounds, iterations=1, warmup_rounds=1)
