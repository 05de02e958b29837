"""``python -m local_emulator.spinnaker``: the Spinnaker Gate test double (Gate's webhook, Echo's matching, Orca's search)."""

from local_emulator.spinnaker import main

raise SystemExit(main())
