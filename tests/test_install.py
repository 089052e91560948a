"""The install as a user meets it: a missing or mismatched ``_C`` is never silent, and the
command-line tools are installed with ``--version``."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rtda

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("rtda-train", "rtda-table1", "rtda-evaluate", "rtda-infer", "rtda-export",
         "rtda-complexity", "rtda-toy")

# Imports the copy of rtda_kernels in the working directory, bypassing the editable install's
# finder, and reports what a user would see: the warnings and the cpu backend's state.
PROBE = """
import sys, warnings
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import rtda_kernels
import torch
print(rtda_kernels.__file__)
print(len([w for w in caught if issubclass(w.category, RuntimeWarning)]))
print(caught[0].message if caught else "")
print(rtda_kernels.available_backends()["cpu"])
try:
    with rtda_kernels.use_backend("cpu"):
        rtda_kernels.adversarial_loss(torch.zeros(1, 1, 2, 2), 0.0)
except RuntimeError as err:
    print("forced:", err)
"""


def _probe(tree: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture()
def source_tree(tmp_path):
    shutil.copytree(ROOT / "rtda_kernels", tmp_path / "rtda_kernels",
                    ignore=shutil.ignore_patterns("_C*.so", "_build_info.py", "__pycache__"))
    return tmp_path


def test_an_unbuilt_source_tree_warns_once_and_refuses_a_forced_backend(source_tree):
    where, warnings, message, cpu, forced = _probe(source_tree)
    assert where.startswith(str(source_tree))
    assert warnings == "1" and "rtda_kernels._C is not built" in message
    assert "--no-build-isolation" in message and "plain-PyTorch reference" in message
    assert cpu.startswith("cpu: missing (rtda_kernels._C is not built")
    assert forced.startswith("forced: use_backend asks for backend 'cpu', which is missing")


def test_a_build_for_another_torch_names_both_versions(source_tree):
    (source_tree / "rtda_kernels" / "_build_info.py").write_text('TORCH_VERSION = "2.6.0+cpu"\n')
    _, warnings, message, cpu, forced = _probe(source_tree)
    assert warnings == "1"
    assert (f"built against torch 2.6.0+cpu, but torch {torch.__version__} is installed"
            in message) and "torch==2.6.0" in message
    assert cpu.startswith("cpu: missing") and forced.startswith("forced:")


def test_the_installed_build_records_its_torch():
    from rtda_kernels import _build_info, available_backends

    assert _build_info.TORCH_VERSION == torch.__version__
    assert available_backends()["cpu"].available


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_is_installed_with_version(tool, capsys):
    scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")}
    assert tool in scripts, f"{tool} is not installed (pip install -e . again?)"
    with pytest.raises(SystemExit) as info:
        scripts[tool].load()(["--version"])
    assert info.value.code == 0
    assert f"rtda {rtda.__version__}, torch {torch.__version__}" in capsys.readouterr().out
    assert importlib.metadata.version("rtda") == rtda.__version__
