"""`python -m harness.report`: the command; its code lives in harness.results.report."""

import sys

from harness.results.report import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
