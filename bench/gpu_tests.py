"""pytest plugin of ``scripts/gpu_check.sh``: skip, rather than fail on, test modules that cannot
be imported because a third-party package is not installed.

A GPU machine set up for CUDA work may lack a dependency that only part of the suite needs (e.g.
``cityscapesscripts``, which ``rtda.data`` imports for the label definitions), and one module
that fails to import stops the whole session ("errors during collection"), GPU tests included.
With this plugin such a module is reported as skipped, with the missing package named, and a
summary line starting with ``gpu-check:`` lists them. Anything else (a missing module of this
project, a syntax error) still fails.

    python -m pytest -p bench.gpu_tests -m cuda tests
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

PROJECT_PACKAGES = frozenset({"rtda", "rtda_kernels", "tests", "bench"})
_MISSING = re.compile(r"No module named '([\w.]+)'")
_skipped: list[tuple[str, str]] = []  # (module path, missing package)


def missing_package(message: str) -> str | None:
    """The third-party package a collection error says is missing, if it really is."""
    for name in _MISSING.findall(message):
        top = name.split(".")[0]
        if top not in PROJECT_PACKAGES and importlib.util.find_spec(top) is None:
            return top
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not isinstance(collector, pytest.Module):
        return
    package = missing_package(str(report.longrepr))
    if package is None:
        return
    report.outcome = "skipped"
    report.longrepr = (str(collector.path), 0, f"Skipped: needs {package}, not installed")
    _skipped.append((str(collector.path), package))


def pytest_terminal_summary(terminalreporter) -> None:
    if _skipped:
        modules = ", ".join(f"{Path(path).name} ({package})" for path, package in _skipped)
        terminalreporter.write_line(
            f"gpu-check: skipped {len(_skipped)} test module(s), a package missing: {modules}")
