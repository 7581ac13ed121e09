"""The console-script entry point: kept light so Ctrl-C during the (slow) imports also exits cleanly."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .app import run
    except KeyboardInterrupt:
        sys.stderr.write("freqkv: error: interrupted\n")
        sys.exit(130)
    sys.exit(run())


if __name__ == "__main__":
    main()
