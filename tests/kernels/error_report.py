"""``python -m tests.kernels.error_report FILE [FILE...]``: the worst recorded error per op,
dtype and backend, from the JSON lines that ``RTDA_RECORD_ERRORS=FILE pytest tests/kernels``
writes (see ``helpers.assert_close``), next to the bound of ``helpers.TOLERANCES``. This is how
the bounds were measured: run it after changing a kernel and before changing a bound."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict

import torch

from tests.kernels.helpers import TOLERANCES


def _backend(test: str) -> str:
    """The backend a test ran on, from its id (emulated CUDA files: ``cuda-emu``)."""
    if "cuda_emulated" in test:
        return "cuda-emu"
    match = re.search(r"\[(?:[^\]]*-)?(cpu|triton|cuda)(?:-[^\]]*)?\]", test)
    if match:
        return match.group(1)
    name = test.split("::")[-1]
    return next((b for b in ("triton", "cuda") if f"_{b}" in name), "cpu")


def main(paths: list[str]) -> int:
    worst: dict[tuple[str, str, str], tuple[float, str, str]] = defaultdict(lambda: (-1.0, "", ""))
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                key = (row["op"], row["dtype"], _backend(row["test"]))
                if row["ratio"] > worst[key][0]:
                    worst[key] = (row["ratio"], row["name"], row["test"])
    print(f"{'op':<24}{'dtype':<10}{'backend':<10}{'worst':>10}{'bound':>10}{'bound/worst':>12}  where")
    for (op, dtype, backend), (ratio, name, test) in sorted(worst.items()):
        bound = TOLERANCES.get(op, {}).get(getattr(torch, dtype), float("nan"))
        factor = bound / ratio if ratio > 0 else float("inf")
        print(f"{op:<24}{dtype:<10}{backend:<10}{ratio:>10.3g}{bound:>10.3g}{factor:>12.1f}  "
              f"{name} @ {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
