"""`python -m harness.zoo`: the command; its code lives in harness.standins.zoo."""

import sys

from harness.standins.zoo import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
