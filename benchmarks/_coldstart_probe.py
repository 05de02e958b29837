"""Serve one event in a fresh process, in-process, and say which Google client libraries it then holds.

``python -P benchmarks/_coldstart_probe.py REQUEST.json RESULT.json``, run with a stage's environment.
REQUEST holds ``stage``, ``source`` (functions/main.py), ``path``, ``body`` (a Pub/Sub push body) and
``modules`` ({client: module}); RESULT gets the HTTP status, the seconds to import the app and to serve the
event (after the interpreter started), and, per client, whether its module is in ``sys.modules``.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def main(request_file: str, result_file: str) -> int:
    request = json.loads(Path(request_file).read_text())
    from functions_framework import create_app

    app = create_app(request["stage"], request["source"], request.get("signature", "cloudevent"))  # type: ignore[no-untyped-call]
    imported = time.perf_counter()
    response = app.test_client().post(request["path"], json=request["body"], headers=request.get("headers") or {})
    served = time.perf_counter()
    loaded = {client: module in sys.modules for client, module in request["modules"].items()}
    Path(result_file).write_text(
        json.dumps(
            {
                "status": response.status_code,
                "import_s": imported - STARTED,
                "event_s": served - imported,
                "loaded": loaded,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
