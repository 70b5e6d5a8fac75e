"""``python -m mpsntk.repro``: see :mod:`mpsntk.repro`."""

import sys

from . import main

sys.exit(main())
