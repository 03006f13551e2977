"""Benchmarks: each prints ratios against a baseline measured in the same run (docs/fastpath.md, README)."""


def help_text(doc: str | None) -> str:
    """A benchmark's --help description: its docstring's first paragraph, on one line."""
    return " ".join((doc or "").split("\n\n")[0].split())
