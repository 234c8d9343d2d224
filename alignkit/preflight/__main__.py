import sys

from alignkit.preflight.cli import main

sys.exit(main())
