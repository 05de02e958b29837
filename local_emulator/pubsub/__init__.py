"""Pub/Sub around Google's emulator: the topics and subscriptions the catalog derives (``topology``, read by the
Terraform parity tests too), push delivery with the production retry and dead-letter policies (``push``:
``python -m local_emulator.pubsub.push``), Pub/Sub's publish limits (``limits``), and the authorizing gRPC proxy
each identity's port runs (``proxy``)."""
