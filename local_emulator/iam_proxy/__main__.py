"""``python -m local_emulator.iam_proxy``: the local stack's IAM: per identity, Pub/Sub, Cloud Storage and metadata ports."""

from local_emulator.iam_proxy import main

main()
