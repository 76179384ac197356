"""``python -m minivz ...`` is the ``minivz`` command."""

import sys

from minivz.cli import main

sys.exit(main())
