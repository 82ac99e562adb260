"""`python -m harness.sweep`: see harness.sweep.cli."""

from harness.sweep.cli import main

raise SystemExit(main())
