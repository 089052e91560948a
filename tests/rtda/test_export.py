"""``python -m rtda.export``: ONNX files of the segmenter and the fused discriminator, checked with
onnxruntime; dynamic shapes; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rtda import export
from rtda.checkpoint_io import save_atomic
from rtda.data.toy import ToyConfig, generate_toy
from rtda.models import build_discriminator, build_segmenter

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

RESOLUTION = [64, 128]
STANDARD_DOMAIN = ""  # the default ONNX operator set; custom ops would carry their own domain


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory):
    """A few real toy target images (the export check's default input, made small)."""
    root = tmp_path_factory.mktemp("toy")
    paths = generate_toy(root, ToyConfig(num_source=1, num_target=1, num_val=3, height=64,
                                         width=128), progress=False)
    return str(paths.target / "leftImg8bit" / "val")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    segmenter = build_segmenter("resnet18")
    disc = build_discriminator("fcd_light_thin", fused=True)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_atomic({"model": segmenter.state_dict(), "discriminator": disc.state_dict(),
                 "config": {"backbone": "resnet18", "resolution": RESOLUTION,
                            "discriminator": "fcd_light_thin"}}, path)
    return path


def _session(path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_segmenter_export_is_checked_and_standard(tmp_path, checkpoint, toy_images, capsys):
    out = tmp_path / "seg.onnx"
    code = export.main(["--checkpoint", str(checkpoint), "--output", str(out),
                        "--check-images", toy_images])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "onnxruntime check: max |logit difference|" in printed and "(3 images)" in printed
    model = onnx.load(str(out))
    assert model.opset_import[0].version >= 17
    assert {node.domain for node in model.graph.node} == {STANDARD_DOMAIN}
    assert not any(node.op_type == "BatchNormalization" for node in model.graph.node)
    session = _session(out)
    assert [i.name for i in session.get_inputs()] == ["image"]
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [3, *RESOLUTION]  # dynamic batch only
    logits = session.run(None, {"image": np.zeros((3, 3, *RESOLUTION), np.float32)})[0]
    assert logits.shape == (3, 19, *RESOLUTION)


def test_dynamic_size_export_runs_at_other_sizes(tmp_path, checkpoint):
    out = tmp_path / "dyn.onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(out),
                        "--dynamic-size", "--no-check"]) == 0
    from rtda.checkpoint_io import load_segmenter
    from rtda.runtime import prepare_for_inference

    lean = prepare_for_inference(load_segmenter(checkpoint)[0], winograd=False)
    x = torch.randn(1, 3, 96, 160)
    expected = lean(x).detach().numpy()
    got = _session(out).run(None, {"image": x.numpy()})[0]
    assert got.shape == (1, 19, 96, 160)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_fused_discriminator_exports_as_standard_ops(tmp_path, checkpoint, toy_images, capsys):
    out = tmp_path / "d.onnx"
    code = export.main(["--checkpoint", str(checkpoint), "--model", "discriminator",
                        "--output", str(out), "--check-images", toy_images])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "same sign on" in printed
    graph = onnx.load(str(out)).graph
    assert [node.op_type for node in graph.node] == [
        "Conv", "Conv", "LeakyRelu", "Conv", "Conv", "LeakyRelu", "Conv", "Conv"]
    groups = [next(a.i for a in n.attribute if a.name == "group")
              for n in graph.node if n.op_type == "Conv"]
    assert groups[::2] == [19, 64, 128] and groups[1::2] == [1, 1, 1]  # depthwise, pointwise


def test_check_detects_a_wrong_file(tmp_path, checkpoint, toy_images):
    """The check fails on a file that computes something else (another model's weights)."""
    out = tmp_path / "seg.onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(out), "--no-check"]) == 0
    torch.manual_seed(1)
    from rtda.runtime import prepare_for_inference

    other = prepare_for_inference(build_segmenter("resnet18"), winograd=False)
    inputs = export.check_images(toy_images, 2, tuple(RESOLUTION))
    result = export.check_onnx(out, other, inputs)
    assert not result.passed() and result.images == 2


def test_bad_input(tmp_path, checkpoint, capsys):
    bare = tmp_path / "bare.pt"
    torch.save(build_segmenter("resnet18").state_dict(), bare)
    assert export.main(["--checkpoint", str(bare), "--model", "discriminator",
                        "--no-check"]) == 2
    assert "holds no discriminator" in capsys.readouterr().err
    assert export.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert export.main(["--checkpoint", str(checkpoint), "--resolution", "100x64",
                        "--no-check"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert export.main(["--checkpoint", str(checkpoint), "--check-images",
                        str(tmp_path / "empty"), "--output", str(tmp_path / "x.onnx")]) == 2
    assert "holds no image" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "ok.png")
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", str(checkpoint), "--opset", "13"])
