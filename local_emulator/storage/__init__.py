"""Cloud Storage around the GCS emulator: the permission each request needs (``access``), object change
notifications to Pub/Sub (``notifications``), and the authorizing HTTP proxy each identity's port runs (``proxy``)."""
