"""`python -m harness.plots`: the command; its code lives in harness.results.plots."""

import sys

from harness.results.plots import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
