"""``python -m agents.cli``: the ``emrshare`` command."""

import sys

from agents.cli import main

sys.exit(main())
