"""``python -m experiments.reproduce``: see `experiments.reproduce.runner.main`."""

import sys

from .runner import main

sys.exit(main())
