"""``python -m cd4ml_ui``: serve the web view (the same as ``cd4ml ui``)."""

import sys

from cd4ml_ui.cli import main

sys.exit(main())
