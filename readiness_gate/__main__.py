"""`python -m readiness_gate`: the same as the installed `readiness-gate` script."""

import sys

from readiness_gate.probe import main

if __name__ == "__main__":
    sys.exit(main())
