"""Helpers shared by the benchmarks: a description of the machine and writing a result as JSON + Markdown."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Sequence

from scnas.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """CPU count, CPU model, Python and torch versions of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_result(name: str, result: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write benchmarks/results/<name>.json and <name>.md atomically."""
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    write_json(json_path, result)
    write_text(md_path, markdown)
    return json_path, md_path
