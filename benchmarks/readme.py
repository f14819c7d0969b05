"""``python -m benchmarks.readme``: copy ``benchmarks/results/latest.md`` into
``benchmarks/README.md`` between the ``results`` markers. Benchmarks only."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- results:start -->", "<!-- results:end -->"


def main() -> int:
    with open(os.path.join(HERE, "results", "latest.md")) as fh:
        table = fh.read().strip()
    path = os.path.join(HERE, "README.md")
    with open(path) as fh:
        text = fh.read()
    if START not in text or END not in text:
        print("README.md has no results markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as fh:
        fh.write(f"{head}{START}\n{table}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
