"""`python -m harness.compare`: the command; its code lives in harness.results.compare."""

import sys

from harness.results.compare import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
