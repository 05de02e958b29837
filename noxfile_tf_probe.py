import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests.terraform.session import terraform as _terraform  # noqa: E402


@nox.session(python="3.11")
def terraform(session: nox.Session) -> None:
    """Check terraform/ offline: fmt, provider schema, checkov, parity and IAM tests."""
    _terraform(session)
