"""The Vertex AI stand-in, run with ``python -m local_emulator.vertex``; its gRPC JobService is ``server``.

This module imports nothing: the server loads google-cloud-aiplatform (about 10 s cold here), while the model
folder check and ``cd4ml train --local`` only need the executor images (``images``) and trainer environments
(``envs``)."""
