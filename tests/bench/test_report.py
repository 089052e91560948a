"""``python -m bench.report`` and ``bench.roofline``: the page, the charts, the roofline rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.roofline import Machine, layer_work, subject_work
from rtda.timing import RETAINED_MALLOC

ROOT = Path(__file__).resolve().parents[2]


def _bench(file: str, group: str, provider: str, median: float) -> dict:
    return {"fullname": f"bench/{file}::test_x[{provider}]", "group": group,
            "params": {"provider": provider}, "stats": {"median": median}}


def _results() -> dict:
    return {"datetime": "2026-12-01T00:00:00", "benchmarks": [
        _bench("test_dwsep_conv2d.py", "light_thin stack fwd (1,19,512,1024)", "eager", 0.100),
        _bench("test_dwsep_conv2d.py", "light_thin stack fwd (1,19,512,1024)", "compile", 0.080),
        _bench("test_dwsep_conv2d.py", "light_thin stack fwd (1,19,512,1024)", "fused", 0.040),
        _bench("test_train_step.py", "train step fcd (2,3,256,512)", "plain", 3.0),
        _bench("test_train_step.py", "train step fcd (2,3,256,512)", "fused", 2.0),
        _bench("test_inference.py", "bisenet_resnet18 inference (1,3,512,1024)", "eager", 1.0),
        _bench("test_inference.py", "bisenet_resnet18 inference (1,3,512,1024)", "runtime", 0.8),
        _bench("test_inference.py", "bisenet_resnet18 inference (1,3,512,1024)", "onnxruntime",
               0.9),
        {"fullname": "bench/test_memory.py::test_peak", "group": None, "params": None,
         "stats": {"median": 1.0}},  # not a provider comparison: ignored
    ]}


def test_render_writes_tables_charts_and_the_roofline(tmp_path):
    out = report.render(_results(), tmp_path / "benchmarks.md", "python -m bench.report",
                        machine=Machine(bandwidth=10e9, flops=50e9))
    page = out.read_text()
    assert "| light_thin stack fwd (1,19,512,1024) | 100.0 | 80.0 | 40.0 | 1.25x | 2.50x |" in page
    assert "| train step fcd (2,3,256,512) | 3,000.0 | 2,000.0 | 1.50x |" in page
    inference = "| bisenet_resnet18 inference (1,3,512,1024) | 1,000.0 | 800.0 | 900.0 |"
    assert inference + " 1.25x | 1.11x |" in page
    assert "test_memory" not in page and "CPU:" in page and "torch " in page
    charts = sorted((tmp_path / "benchmarks").glob("*.png"))
    assert len(charts) == 3 and all(c.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)
    for chart in charts:
        assert f"(benchmarks/{chart.name})" in page
    work = subject_work("light_thin stack", (1, 19, 512, 1024), "fwd")
    bound = max(work.bytes / 10e9, work.flops / 50e9)
    row = next(line for line in page.splitlines()
               if line.startswith("| light_thin stack fwd") and "%" in line)
    assert row.endswith(f"| 40.0 | {100 * bound / 0.040:.0f} % |")


def test_render_uses_the_machine_recorded_with_the_run(tmp_path, monkeypatch):
    import bench.roofline

    monkeypatch.setattr(bench.roofline, "measure_machine", lambda: Machine(20e9, 70e9))
    results = report.record_machine(_results())
    assert results[report.MACHINE_KEY]["bandwidth"] == 20e9
    results[report.MACHINE_KEY]["description"] = ["CPU: the benchmark box"]

    def not_measured_again():
        raise AssertionError("render measured the machine although the JSON records it")

    monkeypatch.setattr(bench.roofline, "measure_machine", not_measured_again)
    page = report.render(results, tmp_path / "b.md", "x").read_text()
    assert "- CPU: the benchmark box" in page and "no machine record" not in page
    assert "- Allocator: not recorded in the JSON" in page
    assert "copy bandwidth 20.0 GB/s, float32 matmul 70.0 GFLOP/s" in page
    page = report.render(_results(), tmp_path / "c.md", "x", machine=Machine(1e9, 1e9)).read_text()
    assert "no machine record in the JSON" in page


def test_layer_work_counts_bytes_and_flops():
    work = layer_work((1, 19, 8, 8), 64, "fwd")
    assert work.bytes == 4 * (19 * 64 + 64 * 16)  # x in, y out (4 x 4 output)
    assert work.flops == 2 * 16 * 19 * (16 + 64)
    both = layer_work((1, 19, 8, 8), 64, "fwd+bwd")
    assert both.bytes == 3 * work.bytes  # + grad_y, x, y read and grad_x written
    assert both.flops == 3 * work.flops + 2 * 16 * 19 * 16  # + the depthwise recomputation
    assert subject_work("adversarial_loss", (1, 1, 8, 8), "fwd") is None
    with pytest.raises(ValueError, match="pass_"):
        layer_work((1, 19, 8, 8), 64, "bwd")


def test_render_rejects_json_without_known_benchmarks(tmp_path):
    with pytest.raises(ValueError, match="no benchmark of a known suite"):
        report.render({"benchmarks": []}, tmp_path / "b.md", "x")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert report.main(["--json", str(bad), "--out", str(tmp_path / "b.md")]) == 2


def test_report_from_a_real_tiny_benchmark_run(tmp_path):
    """pytest-benchmark's own JSON (two providers of one small group) renders."""
    data = tmp_path / "run.json"
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "bench/test_dwsep_conv2d.py",
         "--benchmark-only", "--benchmark-min-rounds=2", f"--benchmark-json={data}",
         "-k", "2x19x256x512 and op and fwd and not bwd and not compile"], cwd=ROOT)
    assert code == 0
    results = json.loads(data.read_text())
    assert len(results["benchmarks"]) == 2
    assert results[report.ALLOCATOR_KEY] == RETAINED_MALLOC  # bench/conftest.py recorded it
    out = tmp_path / "page.md"
    assert report.main(["--json", str(data), "--out", str(out)]) == 0
    page = out.read_text()
    assert "dwsep_conv2d op fwd (2,19,256,512)" in page and "fused / bound" in page
    assert f"- Allocator: {RETAINED_MALLOC}" in page


def test_milliseconds_keep_three_digits_below_ten():
    assert report._ms(0.000234) == "0.234" and report._ms(0.0123) == "12.3"
    assert report._ms(1.5) == "1,500.0" and report._ms(None) == ""


def _with_memory(results: dict) -> dict:
    for bench, peak in zip(results["benchmarks"][:3], (60.0, 90.0, 30.0)):
        bench["extra_info"] = {"peak_mb": peak, "saved_mb": peak / 2}
        bench["group"] = bench["group"].replace(" fwd ", " fwd+bwd ")
    return results


def test_headline_and_memory_tables(tmp_path):
    results = _with_memory(_results())
    headline = report.headline_table(results)
    assert "| light_thin stack fwd+bwd (1,19,512,1024) | 2.50x | 2.00x | 60.0 -> 30.0 |" in headline
    assert "| train step fcd (2,3,256,512) |" not in headline  # not a headline workload
    page = report.render(results, tmp_path / "b.md", "x", machine=Machine(1e9, 1e9)).read_text()
    assert "## Headline" in page and headline in page
    assert ("| light_thin stack fwd+bwd (1,19,512,1024) | 60.0 | 90.0 | 30.0 | 30.0 | 45.0 | 15.0 |"
            in page)


def test_readme_block_is_replaced_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.README_BEGIN}\nold table\n{report.README_END}\nrest\n")
    data = tmp_path / "run.json"
    data.write_text(json.dumps(_with_memory(_results())))
    assert report.main(["--json", str(data), "--out", str(tmp_path / "b.md"),
                        "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n") and text.endswith("rest\n")
    assert report.headline_table(json.loads(data.read_text())) in text
    readme.write_text("no markers\n")
    assert report.main(["--json", str(data), "--out", str(tmp_path / "b.md"),
                        "--readme", str(readme)]) == 2
    with pytest.raises(SystemExit):
        report.main(["-k", "op", "--readme", str(readme)])


def test_the_readme_headline_is_the_committed_run():
    """README.md's benchmark block is what ``--readme`` renders from docs/benchmarks.json: no
    figure there is copied by hand (re-render with ``python -m bench.report --json
    docs/benchmarks.json --readme README.md``)."""
    results = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    text = (ROOT / "README.md").read_text()
    begin = text.index(report.README_BEGIN) + len(report.README_BEGIN)
    assert text[begin:text.index(report.README_END)].strip() == report.readme_block(results)
