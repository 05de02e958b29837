"""``python -m local_emulator.vertex``: the Vertex AI stand-in (``local_emulator.vertex.server``)."""

from local_emulator.vertex.server import main

raise SystemExit(main())
