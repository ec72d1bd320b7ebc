"""``python -m sockwork.bench``: the same as ``sockwork bench``."""

import sys

from .command import main

sys.exit(main())
