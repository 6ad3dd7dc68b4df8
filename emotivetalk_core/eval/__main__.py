"""``python -m emotivetalk_core.eval``: see :mod:`emotivetalk_core.eval.cli`."""

import sys

from .cli import main

sys.exit(main())
