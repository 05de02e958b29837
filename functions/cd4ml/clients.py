"""Google Cloud clients, built lazily from Settings: endpoints and credentials are the only thing that varies.

Each import happens inside its factory, so a function loads only the clients it uses (cold start).
An endpoint written ``http://HOST:PORT`` means plaintext gRPC (an API-level stand-in); anything else is a
normal TLS endpoint with Application Default Credentials.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import firestore, pubsub_v1, storage

    from cd4ml.settings import Settings


def _plaintext(endpoint: str) -> str | None:
    return endpoint.removeprefix("http://") if endpoint.startswith("http://") else None


def storage_client(settings: Settings) -> storage.Client:
    """Cloud Storage; honours STORAGE_EMULATOR_HOST, which needs anonymous credentials."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=settings.project, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    return storage.Client(project=settings.project)


def firestore_client(settings: Settings) -> firestore.Client:
    """The run ledger's Firestore (native mode) database, ``CD4ML_FIRESTORE_DATABASE``; honours FIRESTORE_EMULATOR_HOST.

    The database is always named: Terraform's IAM condition and indexes target exactly this one.
    """
    from google.cloud import firestore

    return firestore.Client(project=settings.project, database=settings.firestore_database)


def publisher_client() -> pubsub_v1.PublisherClient:
    """Pub/Sub publisher that sends each message at once (no 10 ms batching); honours PUBSUB_EMULATOR_HOST."""
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))


def job_service_client(settings: Settings) -> Any:
    """Vertex AI JobService (aiplatform_v1), regional endpoint unless settings name another."""
    import grpc
    from google.cloud import aiplatform_v1
    from google.cloud.aiplatform_v1.services.job_service.transports.grpc import JobServiceGrpcTransport

    host = _plaintext(settings.vertex_endpoint)
    if host:
        return aiplatform_v1.JobServiceClient(transport=JobServiceGrpcTransport(channel=grpc.insecure_channel(host)))
    endpoint = settings.vertex_endpoint or f"{settings.region}-aiplatform.googleapis.com"
    return aiplatform_v1.JobServiceClient(client_options={"api_endpoint": endpoint})


def cloud_build_client(settings: Settings) -> Any:
    """Cloud Build (cloudbuild_v1)."""
    import grpc
    from google.cloud.devtools import cloudbuild_v1
    from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import CloudBuildGrpcTransport

    host = _plaintext(settings.cloudbuild_endpoint)
    if host:
        return cloudbuild_v1.CloudBuildClient(transport=CloudBuildGrpcTransport(channel=grpc.insecure_channel(host)))
    if settings.cloudbuild_endpoint:
        return cloudbuild_v1.CloudBuildClient(client_options={"api_endpoint": settings.cloudbuild_endpoint})
    return cloudbuild_v1.CloudBuildClient()


#: Seconds a call to Vertex AI or Cloud Build may take, its retries included. The clients' defaults retry an
#: unavailable service for up to 600 s, longer than the functions' timeouts (60-120 s): the instance was cut off
#: mid-call and its delivery never answered, so the run ended without the reason (found by the chaos session's
#: Cloud Build outage). Bounded, the call fails with the service's error, and the stage retries or gives up.
#: Short, too: an instance serves one request at a time, and 30 s calls during an outage left pushes waiting
#: for a free instance (answered 503, never counted by the run).
CALL_SECONDS = 10.0


def bounded_call() -> dict[str, Any]:
    """``retry`` and ``timeout`` for one API call: transient errors retried with backoff for ``CALL_SECONDS``."""
    from google.api_core import retry

    return {
        "retry": retry.Retry(
            initial=1.0, maximum=8.0, multiplier=2.0, timeout=CALL_SECONDS, predicate=retry.if_transient_error
        ),
        "timeout": CALL_SECONDS,
    }
