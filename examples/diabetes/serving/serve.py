"""Serve the diabetes model: GET /health reports the model's sha256; POST /predict {"instances": [[10 floats]]}.

The serving contract cd4ml's smoke test checks: listen on $PORT, answer /health with {"model_sha256": …} of the
model file, answer /predict with {"predictions": [...]}. Standard library only: the model is a linear one.
"""

from __future__ import annotations

import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_PATH = os.environ.get("MODEL_PATH", "/opt/model/model.json")


class Handler(BaseHTTPRequestHandler):
    coef: tuple[float, ...] = ()
    intercept = 0.0
    model_sha256 = ""

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path != "/health":
            self._reply(404, {"error": f"no route {self.path}"})
            return
        self._reply(200, {"status": "ok", "model_sha256": Handler.model_sha256})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._reply(404, {"error": f"no route {self.path}"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            rows = body["instances"]
            if any(len(row) != len(Handler.coef) for row in rows):
                raise ValueError(f"each instance needs {len(Handler.coef)} numbers")
            predictions = [
                Handler.intercept + sum(c * float(x) for c, x in zip(Handler.coef, row, strict=True)) for row in rows
            ]
        except (ValueError, KeyError, TypeError) as error:
            self._reply(400, {"error": f'expected {{"instances": [[{len(Handler.coef)} numbers], ...]}}: {error}'})
            return
        self._reply(200, {"predictions": predictions})


if __name__ == "__main__":
    with open(MODEL_PATH, "rb") as f:
        raw = f.read()
    model = json.loads(raw)
    Handler.model_sha256 = hashlib.sha256(raw).hexdigest()
    Handler.coef, Handler.intercept = tuple(float(c) for c in model["coef"]), float(model["intercept"])
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
