"""``python -m emotivetalk_core``: see :mod:`emotivetalk_core.cli`."""

import sys

from .cli import main

sys.exit(main())
