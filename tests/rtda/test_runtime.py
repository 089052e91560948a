"""``rtda.runtime``: BatchNorm folding, the deployment copy, ``Segmenter`` on every input type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rtda.checkpoint_io import CheckpointError, save_atomic
from rtda.data.transforms import SegmentationTransform
from rtda.evaluate import predict_full_resolution
from rtda.models import build_segmenter
from rtda.runtime import (
    Segmenter,
    fold_batchnorm,
    image_batch,
    normalise,
    prepare_for_inference,
    winograd_available,
)
from rtda_kernels.nn import WinogradConv2d

RESOLUTION = (64, 96)  # (height, width), multiples of 32


needs_winograd = pytest.mark.skipif(not winograd_available("cpu"),
                                    reason="the compiled Winograd CPU kernel is not built")


def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding has something to do;
    gains below 1 keep the untrained residual stacks (101 layers) from growing to huge logits,
    and a larger classifier gives logits of a trained model's size (about 10)."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.rand(shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(shape, generator=generator) * 0.4 + 0.3)
            module.bias.data.copy_(torch.rand(shape, generator=generator) * 0.4 - 0.2)
    model.classifier.weight.data.mul_(30)
    return model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(build_segmenter("resnet18")).eval()


@pytest.fixture
def checkpoint(tmp_path, model):
    path = tmp_path / "model.pt"
    save_atomic({"model": model.state_dict(),
                 "config": {"backbone": "resnet18", "resolution": list(RESOLUTION)}}, path)
    return path


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# 3x3 stride-1 convs: R18's BasicBlocks 4 + 3 + 3 + 3, R101's Bottlenecks 33 - 3; + the fusion conv
WINOGRAD_CONVS = {"resnet18": 14, "resnet101": 31}


@pytest.mark.parametrize("winograd", [False, pytest.param(True, marks=needs_winograd)],
                         ids=["direct", "winograd"])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet101"])
def test_folded_model_matches_the_training_model_in_eval_mode(backbone, winograd):
    torch.manual_seed(0)
    model = _trained_like(build_segmenter(backbone)).eval()
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    lean = prepare_for_inference(model, winograd=winograd)
    winograd_convs = sum(isinstance(m, WinogradConv2d) for m in lean.modules())
    assert winograd_convs == (WINOGRAD_CONVS[backbone] if winograd else 0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in lean.modules())
    assert not hasattr(lean, "aux16") and not hasattr(lean, "aux32")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorms  # untouched
    x = torch.randn(2, 3, *RESOLUTION)
    with torch.inference_mode():
        expected = model(x)
        got = lean(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == expected.shape and expected.abs().max() > 3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_winograd_is_the_float32_cpu_default_only(model):
    has_kernel = winograd_available("cpu")
    assert any(isinstance(m, WinogradConv2d) for m in prepare_for_inference(model).modules()) \
        == has_kernel
    for precision in ("bfloat16", "float16"):
        lean = prepare_for_inference(model, precision)
        assert not any(isinstance(m, WinogradConv2d) for m in lean.modules())
        with pytest.raises(ValueError, match="winograd=True needs"):
            prepare_for_inference(model, precision, winograd=True)


@needs_winograd
def test_winograd_blocks_fuse_relu_and_residual(model):
    from rtda.models.deployed import WinogradBasicBlock

    lean = prepare_for_inference(model)
    blocks = [m for m in lean.modules() if isinstance(m, WinogradBasicBlock)]
    assert len(blocks) == 8  # every R18 block; the first of stages 2-4 keeps its stride-2 conv1
    assert sum(block.winograd_conv1 for block in blocks) == 5
    reference = prepare_for_inference(model, winograd=False)
    x = torch.randn(1, 64, 16, 24).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for got, expected in zip(blocks, (m for m in reference.modules()
                                          if type(m).__name__ == "BasicBlock")):
            y = got(x)
            torch.testing.assert_close(y, expected(x), atol=1e-4, rtol=1e-4)
            x = y


def test_fold_batchnorm_counts_and_needs_eval_mode():
    model = build_segmenter("resnet18")
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model)
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model.eval()) == batchnorms


def test_prepared_model_refuses_training(model):
    lean = prepare_for_inference(model).train()
    with pytest.raises(RuntimeError, match="prepared for inference"):
        lean(torch.randn(2, 3, *RESOLUTION))


def test_segmenter_predicts_like_the_evaluation_pipeline(checkpoint, model):
    """At the model's resolution and the image's own size, predict() is evaluate's protocol."""
    segmenter = Segmenter(checkpoint)
    assert segmenter.resolution == RESOLUTION
    rgb = _rgb(45, 77)  # odd size: resized to 64x96 and back
    image, _ = SegmentationTransform(size=RESOLUTION)(Image.fromarray(rgb), None)
    expected = predict_full_resolution(model, image[None], [(45, 77)])[0]
    got = segmenter.predict(rgb)
    assert got.dtype == np.uint8 and got.shape == (45, 77)
    assert (torch.from_numpy(got).long() == expected).float().mean() > 0.999


def test_segmenter_accepts_every_input_type(checkpoint):
    segmenter = Segmenter(checkpoint)
    rgb = _rgb(*RESOLUTION, seed=3)
    from_array = segmenter.predict(rgb)
    assert np.array_equal(segmenter.predict(Image.fromarray(rgb)), from_array)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    assert np.array_equal(segmenter.predict(tensor)[0].numpy(), from_array)
    as_float = segmenter.predict(tensor.float() / 255)
    assert as_float.shape == (1, *RESOLUTION) and as_float.dtype == torch.uint8
    assert np.array_equal(as_float[0].numpy(), from_array)
    channels_last = tensor.contiguous(memory_format=torch.channels_last)
    assert np.array_equal(segmenter.predict(channels_last)[0].numpy(), from_array)

    sizes = [(31, 47), (64, 96), (101, 33)]
    maps = segmenter.predict([_rgb(h, w, seed=i) for i, (h, w) in enumerate(sizes)])
    assert [m.shape for m in maps] == sizes
    logits = segmenter.logits([_rgb(h, w, seed=i) for i, (h, w) in enumerate(sizes)])
    assert [tuple(t.shape) for t in logits] == [(19, h, w) for h, w in sizes]
    assert np.array_equal(logits[0].argmax(0).numpy(), maps[0])
    batch = segmenter.logits(torch.rand(2, 3, 50, 70))
    assert batch.shape == (2, 19, 50, 70) and batch.dtype == torch.float32


def test_segmenter_from_a_module_a_bare_state_dict_and_in_bfloat16(tmp_path, model):
    rgb = _rgb(*RESOLUTION, seed=5)
    reference = Segmenter(model, resolution=RESOLUTION).predict(rgb)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert np.array_equal(Segmenter(bare, resolution=RESOLUTION).predict(rgb), reference)
    half = Segmenter(model, precision="bfloat16", resolution=RESOLUTION)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert (half.predict(rgb) == reference).mean() > 0.9


def test_segmenter_under_torch_compile(model):
    rgb = _rgb(*RESOLUTION, seed=7)
    eager = Segmenter(model, resolution=RESOLUTION).logits(rgb)
    segmenter = Segmenter(model, resolution=RESOLUTION, compile=True)
    torch.testing.assert_close(segmenter.logits(rgb), eager, atol=1e-4, rtol=1e-4)
    # at the model's resolution predict() runs its own compiled graph (model + argmax)
    assert (segmenter.predict(rgb) == eager.argmax(0).numpy()).mean() > 0.999
    other = _rgb(40, 50, seed=8)  # another size: logits resized, then the argmax
    assert np.array_equal(segmenter.predict(other), segmenter.logits(other).argmax(0).numpy())


def test_image_batch_and_normalise():
    batch, sizes = image_batch([_rgb(10, 20), Image.fromarray(_rgb(64, 96))], RESOLUTION)
    assert batch.shape == (2, 3, *RESOLUTION) and batch.dtype == torch.uint8
    assert sizes == [(10, 20), (64, 96)]
    white = normalise(torch.ones(1, 3, 2, 2))
    torch.testing.assert_close(white[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229,
                                                                (1 - 0.456) / 0.224,
                                                                (1 - 0.406) / 0.225]))


@pytest.mark.parametrize("images, error, match", [
    (np.zeros((8, 8), np.uint8), ValueError, r"images\[0\] must be an H x W x 3 uint8"),
    (np.zeros((8, 8, 3), np.float32), ValueError, "uint8"),
    ([], TypeError, "non-empty list"),
    ("image.png", TypeError, "got str"),
    ([np.zeros((8, 8, 3), np.uint8), 3], TypeError, r"images\[1\] must be a NumPy array"),
    (torch.zeros(1, 4, 8, 8), ValueError, "N x 3 x H x W"),
    (torch.zeros(3, 8, 8), ValueError, "N x 3 x H x W"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int32), ValueError, "uint8 .* or floating point"),
])
def test_segmenter_bad_images(model, images, error, match):
    with pytest.raises(error, match=match):
        Segmenter(model, resolution=RESOLUTION).predict(images)


def test_segmenter_bad_arguments(tmp_path, checkpoint, model):
    with pytest.raises(ValueError, match="precision must be one of"):
        Segmenter(model, precision="int8")
    with pytest.raises(ValueError, match="multiples of 32"):
        Segmenter(model, resolution=(50, 64))
    with pytest.raises(CheckpointError, match="predicts 19 classes, expected 7"):
        Segmenter(checkpoint, num_classes=7)
    with pytest.raises(ValueError, match="predicts 19 classes, expected num_classes=7"):
        Segmenter(model, num_classes=7)
    with pytest.raises(CheckpointError, match="not found"):
        Segmenter(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        Segmenter(tmp_path / "junk.pt")


def test_deployed_bisenet_other_class_counts_and_unfolded_models():
    from rtda.models.deployed import DeployedBiSeNet

    torch.manual_seed(0)
    model = _trained_like(build_segmenter("resnet18", num_classes=7)).eval()
    with pytest.raises(ValueError, match="folded model"):
        DeployedBiSeNet(model)
    x = torch.randn(1, 3, *RESOLUTION)
    with torch.inference_mode():
        torch.testing.assert_close(prepare_for_inference(model)(x), model(x), atol=1e-4,
                                   rtol=1e-4)
