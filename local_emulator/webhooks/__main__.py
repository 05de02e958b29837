"""``python -m local_emulator.webhooks``: the webhook receiver stand-in (Slack incoming webhook, JSON endpoint)."""

from local_emulator.webhooks import main

main()
