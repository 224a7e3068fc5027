"""The `smartfarm` console script: dispatches to the edge, cloud and simulator CLIs."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from edge.cli import main as run

    return run(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
