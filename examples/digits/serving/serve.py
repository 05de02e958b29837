"""Serve the digits model: GET /health reports the model's sha256; POST /predict {"instances": [[64 floats]]}.

The model is loaded before the port opens, so a missing library or an unreadable pickle stops the
container at once instead of answering /health while /predict fails.
"""

from __future__ import annotations

import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import joblib  # with scikit-learn, installed from requirements.txt

MODEL_PATH = os.environ.get("MODEL_PATH", "/opt/model/model.joblib")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Handler(BaseHTTPRequestHandler):
    model: Any = None
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
            predictions = Handler.model.predict(body["instances"]).tolist()
        except (ValueError, KeyError, TypeError) as error:
            self._reply(400, {"error": f'expected {{"instances": [[64 numbers], ...]}}: {error}'})
            return
        self._reply(200, {"predictions": predictions})


if __name__ == "__main__":
    Handler.model_sha256 = _sha256(MODEL_PATH)
    Handler.model = joblib.load(MODEL_PATH)
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
