"""`python -m harness.store`: the command; its code lives in harness.sweep.store."""

import sys

from harness.sweep.store import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
