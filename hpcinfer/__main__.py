"""`python -m hpcinfer ...` (see hpcinfer.cli)."""

import sys

from hpcinfer.cli import main

sys.exit(main())
