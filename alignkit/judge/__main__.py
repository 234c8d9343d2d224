"""`python -m alignkit.judge`: the win-rate evaluator (`alignkit-win-rate`; `eval/win_rate.py` in a checkout)."""

import sys

from alignkit.judge.cli import main

if __name__ == "__main__":
    sys.exit(main())
