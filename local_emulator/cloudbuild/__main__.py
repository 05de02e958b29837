"""``python -m local_emulator.cloudbuild``: the Cloud Build stand-in."""

from local_emulator.cloudbuild import main

raise SystemExit(main())
