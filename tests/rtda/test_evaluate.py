"""``rtda.evaluate``: the protocol, agreement with the official Cityscapes evaluation, the figure,
and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rtda import evaluate as ev
from rtda.checkpoint_io import CheckpointError, load_segmenter, read_checkpoint, save_atomic
from rtda.data import Cityscapes, SegmentationTransform
from rtda.figures import figure_size
from rtda.models import build_segmenter
from tests.rtda.data_trees import make_cityscapes

LABEL_SIZE = (40, 72)  # not a multiple of the prediction size: upsampling is exercised


class ColourModel(torch.nn.Module):
    """A stand-in segmenter: a fixed random 1x1 conv, so predictions vary with the image."""

    num_classes = 19

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)
        torch.nn.init.normal_(self.conv.weight, std=3.0)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def cityscapes(tmp_path):
    make_cityscapes(tmp_path / "cs", "val", count=5, size=LABEL_SIZE)
    return tmp_path / "cs"


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter("resnet18")
    path = tmp_path / "model.pt"
    save_atomic({"model": model.state_dict(),
                 "config": {"backbone": "resnet18", "resolution": [32, 64]}}, path)
    return path


def _official_miou(prediction_dir, root) -> float:
    """mIoU by cityscapesscripts' own pixel-level evaluation on the saved label-id PNGs."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    gts = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [prediction_dir / "labelIds" / p.parent.name /
                   p.name.replace("_gtFine_labelIds", "_leftImg8bit") for p in gts]
    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    return official.evaluateImgLists([str(p) for p in predictions], [str(p) for p in gts],
                                     args)["averageScoreClasses"]


def test_protocol_upsamples_logits_to_the_label_size():
    model = ColourModel()
    images = torch.randn(2, 3, 8, 16)
    out = ev.predict_full_resolution(model, images, [(16, 32), (8, 16)])
    assert out[0].shape == (16, 32) and out[1].shape == (8, 16)
    assert torch.equal(out[1], model(images).argmax(1)[1])
    manual = torch.nn.functional.interpolate(model(images), size=(16, 32), mode="bilinear",
                                             align_corners=False).argmax(1)[0]
    assert torch.equal(out[0], manual)


def test_agrees_with_the_official_cityscapes_evaluation(cityscapes, tmp_path):
    dataset = Cityscapes(cityscapes, "val",
                         transform=SegmentationTransform(size=(16, 32), resize_label=False))
    result = ev.evaluate(ColourModel(), dataset, workers=0, progress=False,
                         save_predictions=tmp_path / "pred")
    ours = result.scores(19)
    assert result.images == 5 and ours.pixels > 0
    assert sum(v is not None and v > 0 for v in ours.per_class().values()) >= 5  # a real test
    assert abs(100 * ours.miou - 100 * _official_miou(tmp_path / "pred", cityscapes)) < 0.01
    train_ids = np.asarray(Image.open(next((tmp_path / "pred" / "trainIds").rglob("*.png"))))
    assert train_ids.shape == LABEL_SIZE and train_ids.max() < 19


def test_cli_scores_saves_and_agrees(cityscapes, checkpoint, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = ev.main(["--checkpoint", str(checkpoint), "--root", str(cityscapes), "--workers", "0",
                    "--batch-size", "2", "--save-predictions", str(tmp_path / "pred"),
                    "--json", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mIoU (19)" in printed and "mIoU16" in printed
    payload = json.loads(out.read_text())
    assert payload["resolution"] == [32, 64] and payload["split"] == "val"
    result = payload["results"][0]
    assert result["images"] == 5 and result["classes16"]["num_classes"] == 16
    official = _official_miou(tmp_path / "pred", cityscapes)
    assert abs(100 * result["classes19"]["miou"] - 100 * official) < 0.01
    assert len(list((tmp_path / "pred" / "labelIds").rglob("*.png"))) == 5


def test_figure_has_the_expected_size(cityscapes, checkpoint, tmp_path):
    figure = tmp_path / "fig.png"
    code = ev.main(["--checkpoint", str(checkpoint), "--checkpoint", str(checkpoint),
                    "--root", str(cityscapes), "--figure", str(figure), "--figure-images", "3",
                    "--figure-only", "--figure-titles", "source-only,adapted", "--quiet"])
    assert code == 0
    with Image.open(figure) as image:
        assert image.size == figure_size(4, 3, LABEL_SIZE[0] / LABEL_SIZE[1])
        assert image.mode in ("RGB", "RGBA")


def test_skip_bad_counts_and_reports(cityscapes, checkpoint, tmp_path, capsys):
    bad = next((cityscapes / "leftImg8bit" / "val" / "lindau").glob("*.png"))
    bad.write_bytes(bad.read_bytes()[:50])
    args = ["--checkpoint", str(checkpoint), "--root", str(cityscapes), "--workers", "0",
            "--quiet"]
    assert ev.main(args) == 2
    assert f"{bad}: cannot decode" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="cannot decode"):
        assert ev.main(args + ["--skip-bad", "--json", str(tmp_path / "s.json")]) == 0
    assert "skipped 1 bad files" in capsys.readouterr().out
    result = json.loads((tmp_path / "s.json").read_text())["results"][0]
    assert result["images"] == 4 and result["skipped"][0]["path"] == str(bad)


def test_bad_input(cityscapes, checkpoint, tmp_path, capsys):
    base = ["--root", str(cityscapes), "--quiet", "--workers", "0"]
    assert ev.main(["--checkpoint", str(tmp_path / "none.pt"), *base]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    assert ev.main(["--checkpoint", str(junk), *base]) == 2
    assert "is not a PyTorch checkpoint" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(checkpoint), "--root", str(tmp_path / "nowhere"),
                    "--quiet"]) == 2
    assert "cityscapes root not found" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(checkpoint), "--split", "train", *base]) == 2
    assert "Cityscapes train labels not found" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(checkpoint), "--resolution", "100x50", *base]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(checkpoint), "--dataset", "gta5", "--quiet"]) == 2
    assert "--root is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--checkpoint", str(checkpoint), "--num-classes-eval", "17", *base])


def test_checkpoints(tmp_path):
    model = build_segmenter("resnet18", num_classes=7)
    save_atomic(model.state_dict(), tmp_path / "bare.pt")
    loaded, config = load_segmenter(tmp_path / "bare.pt")
    assert config == {"backbone": "resnet18", "num_classes": 7} and not loaded.training
    with pytest.raises(CheckpointError, match="predicts 7 classes, expected 19"):
        load_segmenter(tmp_path / "bare.pt", num_classes=19)
    save_atomic({"model": model.state_dict(), "config": {"backbone": "resnet101"}},
                tmp_path / "lying.pt")
    with pytest.raises(CheckpointError, match="config says backbone 'resnet101'"):
        load_segmenter(tmp_path / "lying.pt")
    save_atomic({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a BiSeNet"):
        load_segmenter(tmp_path / "other.pt")
    save_atomic([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        read_checkpoint(tmp_path / "list.pt")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # no temporary left over


def test_toy_dataset_by_root(checkpoint, tmp_path, capsys):
    from rtda.data.toy import ToyConfig, generate_toy

    generate_toy(tmp_path / "toy", ToyConfig(num_source=1, num_target=1, num_val=2, height=48,
                                             width=96), workers=1, progress=False)
    args = ["--checkpoint", str(checkpoint), "--dataset", "toy", "--quiet", "--workers", "0"]
    assert ev.main([*args, "--root", str(tmp_path / "toy"), "--json", "-"]) == 0
    assert '"images": 2' in capsys.readouterr().out
    assert ev.main([*args, "--root", str(tmp_path)]) == 2
    assert "is not a toy pair" in capsys.readouterr().err
