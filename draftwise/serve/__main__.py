"""``python -m draftwise.serve --target ... --draft ...``."""

import sys

from draftwise.serve.main import main

sys.exit(main())
