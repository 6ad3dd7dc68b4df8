"""``python -m emotivetalk_core.train``: see :mod:`emotivetalk_core.train.cli`."""

import sys

from .cli import main

sys.exit(main())
