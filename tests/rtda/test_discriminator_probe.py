"""``python -m rtda.train.discriminator_probe``: each discriminator, trained alone on a frozen
source-only segmenter's softmax maps, tells the toy domains apart on images it never saw."""

from __future__ import annotations

import json

import pytest

from rtda.train import discriminator_probe
from rtda.train.config import resolve_config
from rtda.train.run import Trainer
from tests.rtda.data_trees import small_toy

IMAGES, HELD_OUT = 24, 8


@pytest.fixture(scope="module")
def source_only(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    toy = small_toy(root, images=IMAGES, val=2)
    config = resolve_config("toy", overrides=dict(
        mode="source-only", source_root=str(toy.source), target_root=str(toy.target),
        resolution=(64, 128), iterations=40, workers=0, val_every=1000, checkpoint_every=1000,
        out=str(root / "run")))
    Trainer(config, progress=False).train()
    return toy, root / "run" / "last.pt"


def test_every_discriminator_learns_the_domains(source_only, tmp_path, capsys):
    toy, checkpoint = source_only
    out = tmp_path / "probe.json"
    code = discriminator_probe.main([
        "--checkpoint", str(checkpoint), "--source-root", str(toy.source), "--target-root",
        str(toy.target), "--images", str(IMAGES), "--held-out", str(HELD_OUT), "--steps", "100",
        "--d-lr", "1e-3", "--json", str(out), "--quiet"])
    assert code == 0
    results = {r["discriminator"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"fcd", "fcd_light", "fcd_light_thin"}
    for name, result in results.items():  # measured: 79-87 % of pixels, 88-94 % of images
        assert result["pixel_accuracy"] > 0.7 and result["image_accuracy"] > 0.7, (name, result)
    assert "| fcd_light_thin |" in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(source_only, capsys):
    toy, checkpoint = source_only
    with pytest.raises(SystemExit):
        discriminator_probe.main(["--checkpoint", str(checkpoint), "--held-out", "30",
                                  "--images", "20"])
    assert "--held-out must be between 1 and" in capsys.readouterr().err
    code = discriminator_probe.main(["--checkpoint", str(checkpoint), "--source-root",
                                     str(toy.source), "--target-root", str(toy.target),
                                     "--images", "500", "--quiet"])
    assert code == 2 and "pass a smaller --images" in capsys.readouterr().err
