"""The report's sections, one per module, each ``section(ctx) -> str`` returning Markdown.

``ctx`` is the report's :class:`analysis.context.Context` (runs, tidy table, output folder,
objective order and colours). A section starts with its own ``##`` heading. When it has
nothing to show for the runs given it says so in one short italic line (:func:`gap`) instead
of an empty figure or table. :mod:`analysis.report` lists the sections in report order.
"""

from __future__ import annotations


def gap(heading: str, text: str) -> str:
    """A section with nothing to show: its heading and one italic line."""
    return f"{heading}\n\n_{text}_\n"


def images(files: list[str]) -> str:
    """Markdown image links, one paragraph each."""
    return "\n\n".join(f"![{f}]({f})" for f in files)
