"""The smoke script as the build step runs it: a real serving process started, checked, its verdict written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cd4ml import smoke

SHA = "ab" * 32
SMOKE_PY = Path(smoke.__file__)


def test_the_script_serves_checks_and_writes_builder_output(tmp_path: Path) -> None:
    """As the build step runs it: start the command, check, write R and $BUILDER_OUTPUT/output, exit 0; then
    ``verdict`` exits 1 with the reason."""
    model = tmp_path / "serve.py"
    model.write_text(
        "import http.server, json, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(json.dumps({'model_sha256': '"
        + SHA
        + "'}).encode())\n"
        "    def do_POST(self):\n"
        "        self.rfile.read(int(self.headers['Content-Length']))\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'{\"predictions\": [7]}')\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
    )
    golden = tmp_path / "g.jsonl"
    golden.write_text(
        '{"request": {"instances": [[1]]}, "expected": {"predictions": [7]}}\n'
        '{"request": {"instances": [[2]]}, "expected": {"predictions": [2]}}\n'
    )
    from local_emulator.common import processes

    port = processes.free_port()
    outputs = tmp_path / "outputs"
    check = [
        sys.executable,
        str(SMOKE_PY),
        "check",
        "--golden",
        str(golden),
        "--model-sha256",
        SHA,
        "--min-agreement",
        "0.9",
        "--latency-ms",
        "5000",
        "--port",
        str(port),
        "--startup-seconds",
        "20",
        "--result",
        str(tmp_path / "r.json"),
        "--",
        sys.executable,
        str(model),
    ]
    done = subprocess.run(check, env={"BUILDER_OUTPUT": str(outputs)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads((outputs / "output").read_text())
    assert result == json.loads((tmp_path / "r.json").read_text())
    assert result["failed"] == ["agreement"] and result["agreed"] == 1
    verdict = subprocess.run(
        [sys.executable, str(SMOKE_PY), "verdict", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=30
    )
    assert verdict.returncode == 1
    assert "smoke test failed: agreement: 0.50 < min_agreement 0.9 (1/2 golden requests agreed)" in verdict.stderr
    assert not processes.port_open(port), "the server outlived the check"
