"""BiSeNet and the discriminators: output shapes, exact parameter counts (Table III), fused vs
unfused equivalence, torchvision-layout checkpoints and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtda.models import (
    BiSeNet,
    build_discriminator,
    build_segmenter,
    load_backbone_state,
    load_pretrained,
)
from rtda.models.resnet import ResNet

# Table III of the paper (19 input channels) and the same architectures for 16 and 13 classes.
PARAMETERS = {
    19: {"fcd": 2_781_121, "fcd_light": 191_364, "fcd_light_thin": 13_316},
    16: {"fcd": 2_778_049, "fcd_light": 191_121, "fcd_light_thin": 13_073},
    13: {"fcd": 2_774_977, "fcd_light": 190_878, "fcd_light_thin": 12_830},
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=["resnet18", "resnet101"])
def bisenet(request) -> BiSeNet:
    return BiSeNet(request.param, num_classes=19)


@pytest.mark.parametrize("size", [(64, 96), (96, 160)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bisenet_output_shapes(bisenet: BiSeNet, size):
    x = torch.randn(2, 3, *size)
    bisenet.train()
    outputs = bisenet(x)
    assert isinstance(outputs, tuple) and len(outputs) == 3
    for output in outputs:
        assert output.shape == (2, 19, *size)
        assert output.isfinite().all()
    bisenet.eval()
    with torch.no_grad():
        main = bisenet(x)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 19, *size)


def test_bisenet_num_classes_and_backward():
    model = BiSeNet("resnet18", num_classes=7).train()
    main, aux16, aux32 = model(torch.randn(2, 3, 64, 64))
    assert main.shape == aux16.shape == aux32.shape == (2, 7, 64, 64)
    (main.sum() + aux16.sum() + aux32.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_backbone_channels_and_strides():
    for name, channels in (("resnet18", (256, 512)), ("resnet101", (1024, 2048))):
        backbone = ResNet(name).eval()
        assert backbone.channels == channels
        with torch.no_grad():
            s16, s32 = backbone(torch.randn(1, 3, 64, 128))
        assert s16.shape == (1, channels[0], 4, 8)
        assert s32.shape == (1, channels[1], 2, 4)


@pytest.mark.parametrize("bad,match", [
    (torch.randn(1, 3, 60, 64), "multiples of 32"),
    (torch.randn(1, 3, 64, 100), "multiples of 32"),
    (torch.randn(1, 4, 64, 64), "3 \\(RGB\\) channels"),
    (torch.randn(3, 64, 64), "N x 3 x H x W"),
])
def test_bisenet_bad_input(bad, match):
    model = BiSeNet("resnet18").eval()
    with pytest.raises(ValueError, match=match):
        model(bad)


def test_bisenet_training_needs_a_batch_of_two():
    model = BiSeNet("resnet18").train()
    with pytest.raises(ValueError, match="batch of at least 2"):
        model(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_segmenter("resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        BiSeNet("resnet18", num_classes=0)
    with pytest.raises(ValueError, match="discriminator must be one of"):
        build_discriminator("fcd_huge")
    with pytest.raises(ValueError, match="in_channels"):
        build_discriminator("fcd", in_channels=0)


@pytest.mark.parametrize("in_channels", sorted(PARAMETERS))
@pytest.mark.parametrize("name", ["fcd", "fcd_light", "fcd_light_thin"])
def test_discriminator_parameter_counts(name, in_channels):
    for fused in (False, True):
        assert count(build_discriminator(name, in_channels, fused=fused)) == PARAMETERS[in_channels][name]


@pytest.mark.parametrize("name,stride", [("fcd", 32), ("fcd_light", 32), ("fcd_light_thin", 8)])
@pytest.mark.parametrize("size", [(64, 128), (96, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_discriminator_output_shape(name, stride, size):
    model = build_discriminator(name)
    assert model.output_stride == stride
    out = model(torch.rand(2, 19, *size))
    assert out.shape == (2, 1, size[0] // stride, size[1] // stride)


def test_discriminator_wrong_channel_count():
    model = build_discriminator("fcd_light_thin", in_channels=19)
    with pytest.raises(ValueError, match="N x 19 x H x W"):
        model(torch.rand(1, 16, 64, 64))


def test_discriminator_has_no_final_activation():
    """The last layer is linear (logits): outputs take both signs, below -0.2 x max too."""
    model = build_discriminator("fcd_light_thin")
    out = model(torch.randn(4, 19, 64, 64) * 5)
    assert (out > 0).any() and (out < 0).any()


@pytest.mark.parametrize("name", ["fcd", "fcd_light", "fcd_light_thin"])
def test_fused_and_unfused_discriminators_agree(name):
    eager = build_discriminator(name, fused=False).double()
    fused = build_discriminator(name, fused=True).double()
    assert list(eager.state_dict()) == list(fused.state_dict())
    fused.load_state_dict(eager.state_dict())
    x = torch.rand(2, 19, 64, 96, dtype=torch.float64)
    outputs, grads = [], []
    for model in (eager, fused):
        leaf = x.clone().requires_grad_()
        out = model(leaf)
        out.backward(torch.ones_like(out))
        outputs.append(out)
        grads.append([leaf.grad] + [p.grad for p in model.parameters()])
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-10, rtol=1e-10)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_fused_flag_reaches_the_kernel():
    """fused=True really calls the rtda_kernels op (seen by the flop counter as its own op)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_discriminator("fcd_light_thin", fused=True)
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 19, 64, 64))
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    assert any("rtda_kernels" in op for op in ops), ops


def _torchvision_layout(backbone: ResNet) -> dict[str, torch.Tensor]:
    """A state_dict as a torchvision ImageNet checkpoint holds it: our keys (which are
    torchvision's) plus the classifier, with random values."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v.clone()
             for k, v in backbone.state_dict().items()}
    features = 512 * (4 if backbone.name == "resnet101" else 1)
    state["fc.weight"] = torch.randn(1000, features)
    state["fc.bias"] = torch.randn(1000)
    return state


def test_torchvision_key_names():
    keys = set(ResNet("resnet18").state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias"):
        assert key in keys
    keys = set(ResNet("resnet101").state_dict())
    assert "layer3.22.conv3.weight" in keys and "layer3.23.conv1.weight" not in keys


@pytest.mark.parametrize("name", ["resnet18", "resnet101"])
def test_load_pretrained_from_a_file(tmp_path, name):
    source = ResNet(name)
    state = _torchvision_layout(source)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    model = build_segmenter(name, pretrained=str(path))
    loaded = model.context_path.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_load_pretrained_reports_missing_and_unexpected_keys(tmp_path):
    state = _torchvision_layout(ResNet("resnet18"))
    del state["layer1.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer1.0.conv1.weight") as info:
        load_backbone_state(ResNet("resnet18"), state)
    assert "unexpected keys (1): layer9.weight" in str(info.value)
    # A resnet101 checkpoint for a resnet18 model: both lists, and no partial load.
    with pytest.raises(ValueError, match="does not match a torchvision resnet18"):
        load_backbone_state(ResNet("resnet18"), _torchvision_layout(ResNet("resnet101")))


def test_load_pretrained_bad_files(tmp_path):
    with pytest.raises(ValueError, match="pretrained checkpoint not found"):
        load_pretrained(ResNet("resnet18"), tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read pretrained checkpoint"):
        load_pretrained(ResNet("resnet18"), corrupt)
