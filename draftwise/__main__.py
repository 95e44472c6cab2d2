"""``python -m draftwise``: the command line, for environments without the ``draftwise`` script."""

import sys

from draftwise.cli import main

sys.exit(main())
