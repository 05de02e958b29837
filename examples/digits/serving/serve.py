"""Serve the digits model: GET /health reports the model's sha256; POST /predict {"instances": [[64 floats]]}."""

from __future__ import annotations

import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_PATH = os.environ.get("MODEL_PATH", "/opt/model/model.joblib")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Handler(BaseHTTPRequestHandler):
    model = None

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(200, {"status": "ok", "model_sha256": _sha256(MODEL_PATH)})

    def do_POST(self) -> None:  # noqa: N802
        if Handler.model is None:
            import joblib  # the serving base image provides scikit-learn and joblib

            Handler.model = joblib.load(MODEL_PATH)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        predictions = Handler.model.predict(body.get("instances", [])).tolist()
        self._reply(200, {"predictions": predictions})


if __name__ == "__main__":
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
