"""Read a secret: Secret Manager in production, a file for the local stack."""

from __future__ import annotations

from pathlib import Path

from cd4ml.errors import PermanentError


def read(reference: str, *, setting: str = "CD4ML_GATE_KEY_SECRET") -> str:
    """The secret named ``projects/P/secrets/S/versions/V`` or ``file:PATH``; never logged.

    ``setting`` names the variable the reference came from, for the error a wrong one gets.
    """
    if reference.startswith("file:"):
        path = Path(reference.removeprefix("file:"))
        if not path.is_file():
            raise PermanentError(f"the secret file {path} does not exist ({setting})")
        return path.read_text().strip()
    if not reference.startswith("projects/"):
        raise PermanentError(f"{setting} must name projects/P/secrets/S/versions/V or file:PATH")
    from google.cloud import secretmanager

    response = secretmanager.SecretManagerServiceClient().access_secret_version(name=reference)
    return str(response.payload.data.decode("utf-8")).strip()
