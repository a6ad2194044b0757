"""docs/benchmarks.md sections owned by benchmark scripts, between <!-- NAME:start/end --> markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(name: str, heading: str, text: str) -> None:
    """Put `text` (which starts and ends with the markers) in place of the old section, or append it."""
    start, end = markers(name)
    current = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if start in current:
        head, rest = current.split(start, 1)
        current = head + text + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + f"\n\n## {heading}\n\n" + text + "\n"
    DOC.write_text(current)
