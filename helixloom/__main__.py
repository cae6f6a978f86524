"""``python -m helixloom``: the same as the ``helixloom`` command."""

import sys

from helixloom.cli import main

sys.exit(main())
