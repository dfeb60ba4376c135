"""``python -m alpasim_policy.cli``: the same command line as the ``alpasim-policy`` console script."""

import sys

from alpasim_policy.cli import main

sys.exit(main())
