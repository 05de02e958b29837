"""``python -m cd4ml_cli``: the ``cd4ml`` command."""

import sys

from cd4ml_cli.main import main

sys.exit(main())
