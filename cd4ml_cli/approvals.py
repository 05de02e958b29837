"""``cd4ml approve|reject RUN --reason …``: publish a person's decision, with who they are, and report its fate.

Who the caller is: the application-default credentials' account in production (a service account's email, or the
signed-in user's email as Google's tokeninfo endpoint reports it), the OS user on the local stack (whose emulators
have no accounts). Only the manifest's approvers are applied; Terraform lets only them publish decisions at all.
"""

from __future__ import annotations

import getpass
import json
import os
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

from cd4ml import clients, ledger
from cd4ml.errors import Cd4mlError
from cd4ml.events import APPROVAL_DECIDED, Event
from cd4ml.run import AWAITING_APPROVAL
from cd4ml.settings import Settings

TOKENINFO = "https://oauth2.googleapis.com/tokeninfo"


def identity() -> str:
    """The caller as an IAM principal: ``user:EMAIL`` or ``serviceAccount:EMAIL``; ``user:NAME@localhost`` locally."""
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return f"user:{getpass.getuser()}@localhost"
    import google.auth
    import google.auth.transport.requests

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    email = str(getattr(credentials, "service_account_email", "") or "")
    if "@" in email:
        return f"serviceAccount:{email}"
    credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    query = urllib.parse.urlencode({"access_token": credentials.token})
    with urllib.request.urlopen(f"{TOKENINFO}?{query}", timeout=10) as response:
        info: dict[str, Any] = json.loads(response.read())
    if not info.get("email"):
        raise Cd4mlError(
            "the application-default credentials name no email: run `gcloud auth application-default login`"
        )
    return f"user:{info['email']}"


def decide(settings: Settings, run_id: str, decision: str, reason: str, wait: float = 30.0) -> int:
    """Publish the decision, then follow the run until the decision is applied or refused (exit 0 / 1)."""
    from google.api_core.exceptions import PermissionDenied

    from cd4ml.bus import Bus

    book = ledger.Ledger.firestore(clients.firestore_client(settings))
    record = book.get(run_id)
    if record is None:
        raise Cd4mlError(f"no run {run_id!r} in the ledger")
    by = identity()
    event = Event.new(
        APPROVAL_DECIDED,
        run_id,
        {"decision": decision, "by": by, "reason": reason},
        source=f"//cd4ml/cli/{os.uname().nodename}",
        id=str(uuid.uuid4()),
    )
    try:
        Bus(settings.project).publish(event)
    except PermissionDenied as denied:
        raise Cd4mlError(
            f"{by} may not publish approval decisions (only the approvers named in the manifests may): {denied}"
        ) from denied
    print(f"{decision} of {run_id} by {by} sent", flush=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        record = book.get(run_id) or {}
        approval = record.get("approval") or {}
        refused = next((r for r in approval.get("refused") or [] if r.get("id") == event.id), None)
        if refused:
            print(f"refused: {refused.get('why')}")
            return 1
        if approval.get("by") == by and record.get("status") != AWAITING_APPROVAL:
            print(f"run {run_id} is {record.get('status')}: {approval.get('decision')} by {by} recorded")
            return 0
        time.sleep(0.3)
    print(f"no answer within {wait:.0f} s; `cd4ml status {run_id}` shows what happened", flush=True)
    return 3
