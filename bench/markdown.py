"""Put a bench run's figures into the READMEs, between marker comments, never by hand.

``python3 -m bench --markdown`` calls ``update_block`` for README.md (a Markdown table) and for
bench/README.md (the run's printed table in a code block) once the run is over.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def begin_marker(name: str) -> str:
    return f"<!-- bench:{name}:begin (python3 -m bench --markdown writes this block) -->"


def end_marker(name: str) -> str:
    return f"<!-- bench:{name}:end -->"


def update_block(path: Path, name: str, body: str) -> None:
    """Replace the text between the ``name`` markers in ``path`` with ``body``.

    Raises ValueError when the markers are missing, so a run never silently writes nowhere.
    """
    text = path.read_text()
    begin, end = begin_marker(name), end_marker(name)
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        raise ValueError(f"{path}: no {begin} … {end} block to write the bench results into")
    head = text[: start + len(begin)]
    path.write_text(f"{head}\n{body.strip()}\n{text[stop:]}")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; ``|`` inside a cell is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])
