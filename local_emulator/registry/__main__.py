"""``python -m local_emulator.registry``: the local Artifact Registry (Distribution registry and its token service)."""

from local_emulator.registry import main

raise SystemExit(main())
