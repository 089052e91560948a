"""The built-in toy domain pair: determinism, layout, class presence, reuse, and the CLI."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from rtda.data import GTA5, Cityscapes, DatasetError, SegmentationTransform
from rtda.data.labels import LABEL_ID
from rtda.data.toy import ToyConfig, default_root, ensure_toy, generate_toy, main
from rtda.data.toy_scenes import SOURCE, TARGET, draw_scene

SMALL = ToyConfig(seed=3, num_source=4, num_target=3, num_val=2, height=64, width=128)
REQUIRED = ("road", "sidewalk", "building", "wall", "pole", "traffic sign", "vegetation", "sky",
            "person", "car")


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def test_deterministic_for_any_number_of_workers(tmp_path):
    generate_toy(tmp_path / "a", SMALL, workers=1, progress=False)
    generate_toy(tmp_path / "b", SMALL, workers=2, progress=False)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and len(a) == 2 * (4 + 3 + 2) + 1
    generate_toy(tmp_path / "c", ToyConfig(**{**SMALL.__dict__, "seed": 4}), workers=1,
                 progress=False)
    assert _digest(tmp_path / "c") != a


def test_layout_is_read_by_the_real_loaders(tmp_path):
    paths = generate_toy(tmp_path / "toy", SMALL, workers=1, progress=False)
    raw = SegmentationTransform(size=None)
    source = GTA5(paths.source, transform=raw)
    assert len(source) == 4 and source[0]["image"].shape == (3, 64, 128)
    assert source[0]["name"] == "00000.png"
    target = Cityscapes(paths.target, "train", labels=False, transform=raw)
    assert len(target) == 3 and "label" not in target[0]
    val = Cityscapes(paths.target, "val", transform=raw)
    assert len(val) == 2 and val[0]["label"].shape == (64, 128)
    assert Cityscapes(paths.target, "train").samples[0].label is not None  # oracle labels exist
    assert not list(tmp_path.glob(".toy.partial-*"))


def test_scenes_hold_every_required_class_and_the_styles_differ():
    counts = {"source": {}, "target": {}}
    colours = {"source": {}, "target": {}}
    for style in (SOURCE, TARGET):
        for i in range(12):
            rgb, ids = draw_scene(np.random.default_rng(i), (128, 256), style)
            assert rgb.shape == (128, 256, 3) and ids.shape == (128, 256)
            for name in (*REQUIRED, "ego vehicle"):
                counts[style.name][name] = counts[style.name].get(name, 0) + int(
                    (ids == LABEL_ID[name]).sum())
            for name in ("sky", "building", "vegetation", "road"):
                if (ids == LABEL_ID[name]).any():
                    colours[style.name].setdefault(name, []).append(
                        rgb[ids == LABEL_ID[name]].mean(0))
    for name in REQUIRED:
        assert counts["source"][name] > 0 and counts["target"][name] > 0, name
    assert counts["source"]["ego vehicle"] == 0 and counts["target"]["ego vehicle"] > 0
    gaps = {name: np.abs(np.mean(colours["source"][name], 0)
                         - np.mean(colours["target"][name], 0)).max()
            for name in colours["source"]}
    assert np.mean(list(gaps.values())) > 15  # the classes do not look the same in the domains


def test_target_style_is_noisy_and_blurred():
    rgb_s, ids_s = draw_scene(np.random.default_rng(0), (128, 256), SOURCE)
    rgb_t, ids_t = draw_scene(np.random.default_rng(0), (128, 256), TARGET)
    sky_s = rgb_s[ids_s == LABEL_ID["sky"]].astype(float)
    sky_t = rgb_t[ids_t == LABEL_ID["sky"]].astype(float)
    assert sky_s.std(0).max() < 8 < sky_t.std(0).max()  # flat vs textured and noisy


def test_ensure_reuses_and_regenerates(tmp_path):
    root = tmp_path / "toy"
    paths = ensure_toy(root, SMALL, progress=False)
    stamp = (paths.source / "images" / "00000.png").stat().st_mtime_ns
    assert ensure_toy(root, SMALL, progress=False) == paths
    assert (paths.source / "images" / "00000.png").stat().st_mtime_ns == stamp
    bigger = ToyConfig(**{**SMALL.__dict__, "num_source": 5})
    ensure_toy(root, bigger, progress=False)
    assert len(list((root / "source" / "images").glob("*.png"))) == 5
    other = tmp_path / "not-toy"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a toy dataset"):
        ensure_toy(other, SMALL, progress=False)
    assert (other / "precious.txt").exists()


def test_cli(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--num-source", "2", "--num-target", "2", "--num-val", "1",
            "--size", "96x64", "--workers", "1"]
    assert main(argv) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert GTA5(out / "source", transform=SegmentationTransform(size=None))[0]["image"].shape == (
        3, 64, 96)
    assert main([*argv, "--preview", str(tmp_path / "preview.png")]) == 0
    assert "already holds" in capsys.readouterr().out
    with Image.open(tmp_path / "preview.png") as preview:
        assert preview.size == (4 * 256, 2 * round(256 * 64 / 96))
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--size", "big"])
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--num-val", "0"])
    monkeypatch.setenv("RTDA_TOY_ROOT", str(tmp_path / "env"))
    assert default_root() == tmp_path / "env"
