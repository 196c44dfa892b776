"""``python -m smallpond``: the ``smallpond`` command (see :mod:`smallpond.cli`)."""

import sys

from smallpond.cli import main

sys.exit(main())
