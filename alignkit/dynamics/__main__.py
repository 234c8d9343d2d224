import sys

from alignkit.dynamics.cli import main

sys.exit(main())
