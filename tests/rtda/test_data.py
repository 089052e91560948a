"""Dataset loaders (GTA5, SYNTHIA, Cityscapes layouts), label maps, transforms and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label, trainId2label
from PIL import Image

from rtda.data import (
    GTA5,
    SYNTHIA,
    BadSampleError,
    Cityscapes,
    DatasetError,
    SegmentationTransform,
    build_dataset,
    collate,
    parse_size,
)
from rtda.data import labels as L
from tests.rtda.data_trees import (
    make_cityscapes,
    make_gta5,
    make_synthia,
    save,
    write_png16,
)

RAW = SegmentationTransform(size=None)  # no resizing: labels come back pixel for pixel


# -- label definitions ---------------------------------------------------------------------------
def test_cityscapes_id_map_matches_cityscapesscripts():
    for raw in range(256):
        label = id2label.get(raw)
        expected = label.trainId if label is not None and 0 <= label.trainId < 255 else 255
        assert L.CITYSCAPES_ID_TO_TRAIN_ID[raw] == expected, raw


def test_class_names_colours_and_label_ids_match_cityscapesscripts():
    assert len(L.CLASS_NAMES) == 19
    for train_id in range(19):
        label = trainId2label[train_id]
        assert L.CLASS_NAMES[train_id] == label.name
        assert L.CLASS_COLORS[train_id] == tuple(label.color)
        assert L.TRAIN_ID_TO_LABEL_ID[train_id] == label.id
    ids = np.arange(256, dtype=np.uint8)
    back = L.CITYSCAPES_ID_TO_TRAIN_ID[L.train_ids_to_label_ids(ids)]
    assert np.array_equal(back[:19], np.arange(19))
    assert L.train_ids_to_label_ids(np.array([255]))[0] == 0  # ignore -> "unlabeled"
    assert tuple(L.colorize(np.array([[0, 255]]))[0, 0]) == tuple(trainId2label[0].color)


def test_synthia_map():
    table = L.SYNTHIA_ID_TO_TRAIN_ID
    by_name = {name: i for i, name in enumerate(L.CLASS_NAMES)}
    assert table[10] == by_name["person"]  # SYNTHIA "pedestrian"
    assert table[3] == by_name["road"] and table[21] == by_name["wall"]
    assert table[15] == by_name["traffic light"] and table[12] == by_name["motorcycle"]
    for ignored in (0, 13, 14, 22, 23, 1000, 65535):
        assert table[ignored] == 255
    assert len({int(v) for v in table[:23]} - {255}) == 19
    assert L.SYNTHIA_MISSING_IDS == tuple(by_name[n] for n in ("terrain", "truck", "train"))
    assert len(L.EVAL_CLASS_SUBSETS[16]) == 16 and len(L.EVAL_CLASS_SUBSETS[13]) == 13
    assert set(L.EVAL_CLASS_SUBSETS[16]) - set(L.EVAL_CLASS_SUBSETS[13]) == {
        by_name["wall"], by_name["fence"], by_name["pole"]}


# -- the three layouts ---------------------------------------------------------------------------
def test_gta5_reads_palette_labels_as_ids(tmp_path):
    raw = make_gta5(tmp_path, count=3)
    dataset = GTA5(tmp_path, transform=RAW)
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample["name"] == "00001.png" and sample["index"] == 1
    assert sample["image"].shape == (3, 20, 30) and sample["image"].dtype == torch.float32
    expected = torch.from_numpy(L.CITYSCAPES_ID_TO_TRAIN_ID[raw[1]]).long()
    assert torch.equal(sample["label"], expected)
    assert (sample["label"] == 255).any()  # ids 34..40 are unknown


@pytest.mark.parametrize("channels", [3, 4])
def test_synthia_reads_the_red_16_bit_channel(tmp_path, channels):
    raw = make_synthia(tmp_path, count=2, channels=channels)
    dataset = SYNTHIA(tmp_path, transform=RAW)
    sample = dataset[0]
    expected = torch.from_numpy(L.SYNTHIA_ID_TO_TRAIN_ID[raw[0]]).long()
    assert torch.equal(sample["label"], expected)
    assert sample["name"] == "0000000.png"


def test_synthia_single_channel_label(tmp_path):
    make_synthia(tmp_path, count=1)
    ids = np.full((20, 30), 8, dtype=np.uint16)  # car
    Image.fromarray(ids).save(tmp_path / "GT" / "LABELS" / "0000000.png")
    assert (SYNTHIA(tmp_path, transform=RAW)[0]["label"] == L.CLASS_NAMES.index("car")).all()


def test_cityscapes_splits_and_unlabelled_target(tmp_path):
    val = make_cityscapes(tmp_path, "val", count=3)
    make_cityscapes(tmp_path, "train", count=4, labels=False)
    dataset = Cityscapes(tmp_path, "val", transform=RAW)
    assert [s.image.name for s in dataset.samples][0] == "frankfurt_000000_000019_leftImg8bit.png"
    sample = dataset[0]
    assert sample["name"] == "frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    expected = torch.from_numpy(L.CITYSCAPES_ID_TO_TRAIN_ID[val[0]]).long()
    assert torch.equal(sample["label"], expected)
    target = Cityscapes(tmp_path, "train", labels=False, transform=RAW)
    assert len(target) == 4 and "label" not in target[0]
    with pytest.raises(DatasetError, match="gtFine/train"):
        Cityscapes(tmp_path, "train")  # labels asked for, none on disk


def test_build_dataset(tmp_path):
    make_gta5(tmp_path / "g")
    make_cityscapes(tmp_path / "c")
    assert isinstance(build_dataset("gta5", tmp_path / "g"), GTA5)
    assert build_dataset("cityscapes", tmp_path / "c", "val").split == "val"
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_dataset("kitti", tmp_path)
    with pytest.raises(DatasetError, match="list file"):
        build_dataset("gta5", tmp_path / "g", "val")


def test_list_file_selects_and_orders(tmp_path):
    make_gta5(tmp_path, count=4)
    listing = tmp_path / "subset.txt"
    listing.write_text("# a subset\nimages/00003.png\n\n00001.png  # relative to images/\n")
    dataset = GTA5(tmp_path, list_file=listing, transform=RAW)
    assert [dataset[i]["name"] for i in range(len(dataset))] == ["00003.png", "00001.png"]
    listing.write_text("00001.png\nimages/00009.png\n")
    with pytest.raises(DatasetError, match=r"subset.txt:2: 'images/00009.png'"):
        GTA5(tmp_path, list_file=listing)
    with pytest.raises(DatasetError, match="cannot read list file"):
        GTA5(tmp_path, list_file=tmp_path / "missing.txt")


# -- transforms ----------------------------------------------------------------------------------
def _pair(height=40, width=60):
    """An image whose red channel encodes the column and a label equal to the column // 4."""
    cols = np.tile(np.arange(width, dtype=np.uint8) * 4, (height, 1))
    rgb = np.dstack([cols, np.zeros_like(cols), np.full_like(cols, 100)])
    return Image.fromarray(rgb), (cols // 16).astype(np.uint8)


def test_resize_uses_nearest_for_labels_and_keeps_them_for_eval():
    image, label = _pair()
    tensor, target = SegmentationTransform(size=(20, 30))(image, label)
    assert tensor.shape == (3, 20, 30) and target.shape == (20, 30)
    assert set(target.unique().tolist()) <= set(np.unique(label).tolist())
    tensor, target = SegmentationTransform(size=(32, 64), resize_label=False)(image, label)
    assert tensor.shape == (3, 32, 64) and target.shape == (40, 60)
    assert torch.equal(target, torch.from_numpy(label).long())


def test_normalisation_is_imagenet_rgb():
    image = Image.fromarray(np.full((2, 2, 3), (255, 0, 128), dtype=np.uint8))
    tensor, _ = SegmentationTransform(size=None)(image, None)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert torch.allclose(tensor[:, 0, 0], torch.tensor(expected), atol=1e-6)


def test_flip_crop_scale_keep_image_and_label_aligned():
    image, label = _pair()
    transform = SegmentationTransform(size=(40, 60), scale=(0.5, 1.5), crop=(32, 48), flip=True)
    flipped = 0
    for seed in range(12):
        tensor, target = transform(image, label, np.random.default_rng(seed))
        assert tensor.shape == (3, 32, 48) and target.shape == (32, 48)
        red = tensor[0] * 0.229 + 0.485  # back to [0, 1]
        valid = target != 255
        # the label was derived from the red channel: they must still agree pixel by pixel
        assert valid.any()
        recovered = torch.round(red * 255 / 4).long() // 4
        assert (recovered[valid] - target[valid]).abs().max() <= 1
        flipped += int(target[0, 0] > target[0, -1]) if valid[0, 0] and valid[0, -1] else 0
    assert 0 < flipped < 12  # both orientations occur


def test_crop_pads_with_ignore():
    image, label = _pair(10, 12)
    _, target = SegmentationTransform(size=None, crop=(16, 16))(image, label,
                                                                np.random.default_rng(0))
    assert target.shape == (16, 16) and (target[10:] == 255).all() and (target[:, 12:] == 255).all()


def test_same_seed_same_augmentation(tmp_path):
    make_gta5(tmp_path, count=2, size=(40, 60))
    dataset = GTA5(tmp_path, transform=SegmentationTransform(size=(40, 60), scale=(0.5, 2),
                                                              crop=(32, 32), flip=True))
    a, b, c = dataset[(1, 7)], dataset[(1, 7)], dataset[(1, 8)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_transform_arguments_are_checked():
    with pytest.raises(ValueError, match="size"):
        SegmentationTransform(size=(0, 10))
    with pytest.raises(ValueError, match="scale"):
        SegmentationTransform(scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="resize_label=False"):
        SegmentationTransform(resize_label=False, flip=True)
    with pytest.raises(ValueError, match="rng"):
        SegmentationTransform(flip=True)(*_pair())
    assert parse_size("1024x512") == (512, 1024)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("1024")


# -- bad input -----------------------------------------------------------------------------------
def test_missing_root_and_split_name_the_path_and_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"gta5 root not found: .*nowhere.*images/NNNNN.png"):
        GTA5(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"images folder not found: .*RGB"):
        SYNTHIA(tmp_path)
    make_cityscapes(tmp_path, "val")
    with pytest.raises(DatasetError, match=r"Cityscapes train .*not found: .*train"):
        Cityscapes(tmp_path, "train", labels=False)
    with pytest.raises(DatasetError, match="split must be one of"):
        Cityscapes(tmp_path, "trainval")


def test_zero_samples_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match="no gta5 samples found"):
        GTA5(tmp_path)


def test_image_without_label(tmp_path):
    make_gta5(tmp_path, count=3)
    (tmp_path / "labels" / "00001.png").unlink()
    with pytest.raises(BadSampleError, match=r"00001.png: has no label file"):
        GTA5(tmp_path)
    with pytest.warns(UserWarning, match="00001.png"):
        dataset = GTA5(tmp_path, skip_bad=True)
    assert len(dataset) == 2 and len(dataset.skipped) == 1


def _corrupt(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_images_name_the_file(tmp_path, damage):
    make_gta5(tmp_path, count=3)
    bad = tmp_path / "images" / "00002.png"
    if damage == "truncated":
        _corrupt(bad)
    else:
        bad.write_bytes(b"" if damage == "empty" else b"not a png at all" * 10)
    dataset = GTA5(tmp_path)
    dataset[0]
    with pytest.raises(BadSampleError, match=r"images/00002.png: cannot decode"):
        dataset[2]
    skipping = GTA5(tmp_path, skip_bad=True)
    batch = collate([skipping[i] for i in range(3)])
    assert batch["image"].shape[0] == 2 and batch["name"] == ["00000.png", "00001.png"]
    assert len(batch["skipped"]) == 1 and batch["skipped"][0][0].endswith("00002.png")


def test_corrupt_synthia_label(tmp_path):
    make_synthia(tmp_path, count=2)
    _corrupt(tmp_path / "GT" / "LABELS" / "0000001.png", keep=0.3)
    with pytest.raises(BadSampleError, match=r"LABELS/0000001.png: cannot decode"):
        SYNTHIA(tmp_path)[1]


def test_label_of_the_wrong_size(tmp_path):
    make_cityscapes(tmp_path, "val", count=2)
    label = next((tmp_path / "gtFine" / "val" / "lindau").glob("*.png"))
    save(label, np.zeros((10, 30), dtype=np.uint8))
    dataset = Cityscapes(tmp_path, "val")
    with pytest.raises(BadSampleError, match=r"lindau_000001_000019_gtFine_labelIds.png: label is "
                                             r"30x10 but its image is 30x20"):
        dataset[1]


def test_label_of_the_wrong_kind(tmp_path):
    make_gta5(tmp_path, count=1)
    save(tmp_path / "labels" / "00000.png", np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.raises(BadSampleError, match="8-bit greyscale or palette"):
        GTA5(tmp_path)[0]


def test_skipped_samples_survive_worker_processes(tmp_path):
    make_gta5(tmp_path, count=4)
    _corrupt(tmp_path / "images" / "00001.png")
    dataset = GTA5(tmp_path, skip_bad=True, transform=RAW)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == 3
    assert [p for b in batches for p, _ in b["skipped"]] == [str(tmp_path / "images" / "00001.png")]


def test_collate_keeps_labels_of_different_sizes_as_a_list():
    a = {"image": torch.zeros(3, 4, 4), "label": torch.zeros(4, 4), "name": "a", "index": 0}
    b = {"image": torch.zeros(3, 4, 4), "label": torch.zeros(8, 8), "name": "b", "index": 1}
    batch = collate([a, b])
    assert isinstance(batch["label"], list) and batch["label"][1].shape == (8, 8)
    assert collate([a, a])["label"].shape == (2, 4, 4)
    assert collate([{"skipped": "x", "reason": "r", "index": 0}])["image"] is None


def test_png16_writer_round_trips_through_opencv(tmp_path):
    import cv2

    array = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 1000
    write_png16(tmp_path / "x.png", array)
    read = cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_UNCHANGED)
    assert read.dtype == np.uint16 and np.array_equal(read[:, :, ::-1], array)
