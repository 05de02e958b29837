"""FETCHSOURCE of the local Cloud Build: a `storage_source` archive (.tar.gz or .zip) from the GCS emulator."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import IO

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild


class SourceError(Exception):
    """The source could not be fetched or unpacked; str() is the build's failure detail."""


def fetch_source(build: cloudbuild.Build, workspace: Path, log_file: IO[str], token: str | None = None) -> None:
    """Download and unpack the build's storage_source into workspace (STORAGE_EMULATOR_HOST), with ``token`` (the
    build account's access token) when given; raise SourceError."""
    source = build.source.storage_source
    where = f"gs://{source.bucket}/{source.object_}"
    if not source.bucket or not source.object_:
        raise SourceError("build has no storage_source; the local Cloud Build only fetches sources from GCS")
    from google.api_core import exceptions as api_exceptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client as StorageClient

    archive = workspace.with_name(f"{workspace.name}.source")
    workspace.mkdir(parents=True, exist_ok=True)
    log_file.write(f"Fetching storage object: {where}\n")
    try:
        if token:
            from google.oauth2.credentials import Credentials

            client = StorageClient(project=build.project_id, credentials=Credentials(token))  # type: ignore[no-untyped-call]
        else:
            client = StorageClient(project=build.project_id, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
        blob = client.bucket(source.bucket).blob(source.object_, generation=source.generation or None)
        blob.download_to_filename(str(archive))
    except api_exceptions.NotFound:
        raise SourceError(f"failed to fetch source: {where}: object not found") from None
    except Exception as error:  # transport or API error: the build's failure reason
        raise SourceError(f"failed to fetch source {where}: {error}") from error
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    if not (workspace / member).resolve().is_relative_to(workspace.resolve()):
                        raise ValueError(f"archive member escapes the workspace: {member}")
                zipped.extractall(workspace)
        else:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(workspace, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise SourceError(f"failed to unpack source {where}: {error}") from error
    finally:
        archive.unlink(missing_ok=True)
    build.source_provenance.resolved_storage_source = cloudbuild.StorageSource(
        bucket=source.bucket, object_=source.object_, generation=source.generation
    )
