"""``python -m rtda.complexity``: counted parameters and FLOPs, the JSON and table outputs, and
argument errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rtda import complexity
from rtda.timing import RETAINED_MALLOC
from rtda.models import build_discriminator
from tests.rtda.test_models import PARAMETERS


def test_discriminator_flops_match_table_iii():
    """GFLOPs at 19 x 512 x 1024, counted on the meta device: Table III's 30.88 / 2.14 / 1.04."""
    expected = {"fcd": 30.88, "fcd_light": 2.14, "fcd_light_thin": 1.04}
    for name, gflops in expected.items():
        counted = complexity.count_flops(build_discriminator(name), (19, 512, 1024)) / 1e9
        assert round(counted, 2) == gflops, name


def test_flops_of_fused_and_unfused_layers_agree():
    for name in ("fcd_light", "fcd_light_thin"):
        eager = complexity.count_flops(build_discriminator(name), (19, 64, 128))
        fused = complexity.count_flops(build_discriminator(name, fused=True), (19, 64, 128))
        assert eager == fused > 0


def test_json_report_on_a_small_size():
    result = subprocess.run(
        [sys.executable, "-m", "rtda.complexity", "--json", "--repeats", "1",
         "--discriminator-size", "128x64", "--segmenter-sizes", "64x64", "--in-channels", "16"],
        capture_output=True, text=True, check=True, timeout=300,
    )
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["discriminators"]}
    assert set(rows) == set(PARAMETERS[16])
    for name, row in rows.items():
        assert row["params"] == PARAMETERS[16][name]
        assert row["input"] == [16, 64, 128]
        assert row["gflops"] > 0
        for pass_ in ("fwd", "fwd+bwd"):
            assert row[f"{pass_}_eager_ms"] > 0 and row[f"{pass_}_fused_ms"] > 0
            assert row[f"{pass_}_speedup"] == pytest.approx(
                row[f"{pass_}_eager_ms"] / row[f"{pass_}_fused_ms"])
    segmenters = {row["name"]: row for row in report["segmenters"]}
    assert set(segmenters) == {"bisenet_resnet18", "bisenet_resnet101"}
    assert segmenters["bisenet_resnet18"]["params"] < segmenters["bisenet_resnet101"]["params"]
    assert all(row["inference_ms"] > 0 and row["input"] == [3, 64, 64] for row in segmenters.values())
    assert report["environment"]["repeats"] == 1
    assert report["environment"]["allocator"] == RETAINED_MALLOC  # as bench's tools


def test_sizes_are_width_by_height():
    """WxH like the rest of the CLI: 128x64 is 128 wide and 64 high (input C x 64 x 128)."""
    args = complexity.parse_args(["--discriminator-size", "128x64", "--segmenter-sizes",
                                  "64x32,96x64"])
    assert args.discriminator_size == (64, 128)
    assert args.segmenter_sizes == [(32, 64), (64, 96)]


def test_tables_without_timing(capsys):
    assert complexity.main(["--repeats", "0", "--discriminator-size", "64x64",
                            "--segmenter-sizes", "64x64", "--backbones", "resnet18",
                            "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "| fcd_light_thin | 13,316 |" in out
    assert "| bisenet_resnet18 | 3x64x64 |" in out
    assert " ms" not in out and "Times:" not in out  # no timing with --repeats 0
    assert complexity.main(["--repeats", "0", "--discriminators", "fcd", "--no-segmenter"]) == 0
    out = capsys.readouterr().out
    assert "2,781,121" in out and "30.88" in out and "Segmenters" not in out


@pytest.mark.parametrize("args,message", [
    (["--discriminator-size", "100x64"], "multiples of 32, got '100x64' (W = 100, H = 64)"),
    (["--discriminator-size", "64by64"], "expected WxH, e.g. 1024x512, got '64by64'"),
    (["--discriminators", "fcd,gan"], "choose from"),
    (["--backbones", "resnet50"], "choose from"),
    (["--repeats", "-1"], "--repeats must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--device", "nowhere"], "--device"),
])
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        complexity.parse_args(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
