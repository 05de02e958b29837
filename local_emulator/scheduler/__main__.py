"""``python -m local_emulator.scheduler``: the Cloud Scheduler stand-in."""

from local_emulator.scheduler import main

main()
