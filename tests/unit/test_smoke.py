"""The smoke test in the build: the checker's verdicts against a tiny in-process server, and on_build's reading
of Cloud Build's result (``results.buildStepOutputs``: bytes, base64 in the Build's JSON, one entry per step in
step order; cloudbuild.proto Results.build_step_outputs)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cd4ml import events, smoke
from cd4ml.events import PubSubMessage
from cd4ml.run import Run
from cd4ml.stages import delivery

SHA = "ab" * 32
SMOKE_PY = Path(smoke.__file__)


class _Model(BaseHTTPRequestHandler):
    """/health reports a sha256; /predict answers the sum of each instance modulo 10, after ``delay`` seconds."""

    sha256 = SHA
    delay = 0.0

    def log_message(self, *_args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"status": "ok", "model_sha256": type(self).sha256})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        threading.Event().wait(type(self).delay)
        self._reply(200, {"predictions": [sum(row) % 10 for row in body["instances"]]})


@pytest.fixture
def server() -> Iterator[tuple[int, type[_Model]]]:
    handler = type("Model", (_Model,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _golden(labels: list[int]) -> list[smoke.Golden]:
    """Requests whose right answer is the label (one pixel holding it)."""
    return [
        smoke.Golden(n, {"instances": [[label, 0, 0]]}, {"predictions": [label]}) for n, label in enumerate(labels, 1)
    ]


def _options(port: int, golden: list[smoke.Golden], **changes: Any) -> smoke.Options:
    values: dict[str, Any] = {"min_agreement": 0.9, "latency_ms": 2000.0, "startup_seconds": 2.0} | changes
    return smoke.Options(
        golden,
        SHA,
        values["min_agreement"],
        values["latency_ms"],
        port,
        "/health",
        values["startup_seconds"],
        values.get("abs_tolerance", smoke.ABS_TOLERANCE),
        values.get("rel_tolerance", smoke.REL_TOLERANCE),
    )


def test_a_model_that_agrees_passes_with_its_numbers(server: tuple[int, type[_Model]]) -> None:
    port, _ = server
    result = smoke.check(_options(port, _golden([1, 2, 3, 4])))
    assert result["passed"] is True and result["failed"] == [] and result["reason"] == ""
    assert result["checks"] == {"health": True, "sha256": True, "agreement": True, "latency": True}
    assert (result["agreed"], result["requests"], result["agreement"]) == (4, 4, 1.0)
    assert 0 < result["latency_p50_ms"] <= result["latency_max_ms"] < 2000
    assert result["health_sha256"] == SHA


def test_disagreement_below_the_minimum_names_the_check_and_the_numbers(server: tuple[int, type[_Model]]) -> None:
    port, _ = server
    golden = [*_golden([1, 2, 3, 4]), smoke.Golden(5, {"instances": [[5, 0, 0]]}, {"predictions": [6]})]
    result = smoke.check(_options(port, golden))
    assert result["passed"] is False and result["failed"] == ["agreement"]
    assert result["reason"] == "agreement: 0.80 < min_agreement 0.9 (4/5 golden requests agreed)"
    assert result["failures"] == [
        'line 5: expected {"predictions": [6]}, got 200 {"predictions": [5]} (tolerance abs 1e-12, rel 1e-09)'
    ]
    assert smoke.check(_options(port, golden, min_agreement=0.8))["passed"] is True


def test_a_server_reporting_another_model_fails_the_sha256_check(server: tuple[int, type[_Model]]) -> None:
    port, handler = server
    handler.sha256 = "cd" * 32
    result = smoke.check(_options(port, _golden([1])))
    assert result["failed"] == ["sha256"] and result["checks"]["agreement"] is True
    assert f"reports model_sha256 '{'cd' * 32}', not the model's {SHA}" in result["reason"]


def test_a_slow_request_fails_the_latency_budget(server: tuple[int, type[_Model]]) -> None:
    port, handler = server
    handler.delay = 0.3
    result = smoke.check(_options(port, _golden([1, 2]), latency_ms=100.0))
    assert result["failed"] == ["latency"] and result["latency_max_ms"] >= 300
    assert result["reason"].startswith(f"latency: max {result['latency_max_ms']} ms > budget 100.0 ms")


def test_no_health_answer_fails_every_check_with_the_servers_last_words() -> None:
    result = smoke.check(_options(9, _golden([1]), startup_seconds=0.3), server_log=lambda: "ImportError: joblib")
    assert result["passed"] is False and result["failed"] == list(smoke.CHECKS)
    assert result["reason"].startswith("health: /health did not answer 200 within 0.3 s")
    assert result["reason"].endswith("server output: ImportError: joblib")
    exited = smoke.check(_options(9, _golden([1])), server_exited=lambda: 3)
    assert exited["reason"].startswith("health: the server exited with code 3 before /health answered")


def test_responses_match_by_the_expected_part() -> None:
    assert smoke.matches({"predictions": [1]}, {"predictions": [1], "model": "x"})
    assert not smoke.matches({"predictions": [1]}, {"predictions": [1, 2]})
    assert smoke.matches({"p": 0.1 + 0.2}, {"p": 0.3}) and not smoke.matches({"p": 0.3}, {"p": 0.31})
    assert not smoke.matches({"ok": True}, {"ok": 1}) and not smoke.matches(1, "1")


def test_numeric_predictions_agree_within_the_manifests_tolerance(server: tuple[int, type[_Model]]) -> None:
    """A regression's golden rows carry true targets: its predictions are near them, never equal."""
    port, _ = server
    golden = [smoke.Golden(n, {"instances": [[v, 0, 0]]}, {"predictions": [v + 0.4]}) for n, v in enumerate((1, 2), 1)]
    exact = smoke.check(_options(port, golden))
    assert exact["agreed"] == 0 and "(tolerance abs 1e-12, rel 1e-09)" in exact["failures"][0]
    assert smoke.check(_options(port, golden, abs_tolerance=0.5))["agreed"] == 2
    assert smoke.check(_options(port, golden, rel_tolerance=0.3))["agreed"] == 2  # 0.4 of 2.4 and 1.4 is < 30 %
    assert smoke.check(_options(port, golden, abs_tolerance=0.3))["agreed"] == 0
    assert smoke.matches({"p": [10.0]}, {"p": [10.9]}, abs_tol=1.0) and not smoke.matches({"p": "a"}, {"p": "b"}, 1.0)


def test_the_build_passes_the_manifests_tolerances_to_the_checker_only_when_given() -> None:
    import yaml

    from cd4ml.manifest import parse

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "digits" / "manifest.yaml").read_text())
    plain = delivery.smoke_steps(parse(doc), "r/digits:x", SHA)[0].args
    assert "--abs-tolerance" not in plain and "--rel-tolerance" not in plain  # an unchanged manifest, the same build
    doc["serving"]["smoke"].update(abs_tolerance=5, rel_tolerance=0.01)
    args = list(delivery.smoke_steps(parse(doc), "r/digits:x", SHA)[0].args)
    assert args[args.index("--abs-tolerance") + 1] == "5.0" and args[args.index("--rel-tolerance") + 1] == "0.01"


def test_the_models_code_runs_with_no_network_and_no_credential_in_the_build() -> None:
    """On Cloud Build every step's own container is on the `cloudbuild` network, where the metadata server hands out
    the build account's token (build-config-file-schema#network); so no step may run in the model's image. Its
    server and the checker run in a container the docker builder starts with `--network=none` (a loopback interface
    alone), seeing only the smoke folder; report and verdict run in cd4ml's own checker image."""
    import yaml

    from cd4ml.manifest import parse

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "digits" / "manifest.yaml").read_text())
    image = "r/digits:x"
    steps = delivery.smoke_steps(parse(doc), image, SHA)
    assert [(s.id, s.name) for s in steps] == [
        (delivery.RUN_STEP, delivery.DOCKER_BUILDER),
        (delivery.SMOKE_STEP, delivery.CHECKER_IMAGE),
        (delivery.VERDICT_STEP, delivery.CHECKER_IMAGE),
    ]
    assert image not in [s.name for s in steps]  # no step runs in the model's image
    run = list(steps[0].args)
    flags = run[: run.index(image)]
    assert flags == [
        "run",
        "--rm",
        "--network=none",
        f"--volume=/workspace/{delivery.SMOKE_DIR}:{delivery.SMOKE_MOUNT}",
        "--entrypoint=python3",
    ]
    # No credential reaches it: no environment, no other mount (the docker socket, a gcloud config), no env of the step.
    assert not any(f.startswith(("-e", "--env", "--network=cloudbuild", "--mount")) for f in flags)
    assert all(not s.env and not s.secret_env and not s.volumes for s in steps)
    inside = run[run.index(image) + 1 :]
    assert inside[:2] == [f"{delivery.SMOKE_MOUNT}/{delivery.SMOKE_SCRIPT}", "check"]
    assert inside[inside.index("--golden") + 1] == f"{delivery.SMOKE_MOUNT}/{delivery.SMOKE_GOLDEN}"
    assert inside[inside.index("--result") + 1] == f"{delivery.SMOKE_MOUNT}/result.json"
    assert inside[inside.index("--") + 1 :] == ["python3", "/opt/serve.py"]
    assert [list(s.args) for s in steps[1:]] == [
        [delivery.SMOKE_SCRIPT, "report", delivery.SMOKE_RESULT],
        [delivery.SMOKE_SCRIPT, "verdict", delivery.SMOKE_RESULT],
    ]
    # What the run step writes (/cd4ml-smoke/result.json), as report and verdict see it from /workspace.
    assert f"{delivery.SMOKE_DIR}/result.json" == delivery.SMOKE_RESULT


def test_report_keeps_the_result_or_says_there_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's container writes the result; report copies it to $BUILDER_OUTPUT/output, or a failed one."""
    monkeypatch.setenv("BUILDER_OUTPUT", str(tmp_path / "out"))
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"passed": True, "failed": []}))
    assert smoke.main(["report", str(result)]) == 0
    assert json.loads((tmp_path / "out" / "output").read_text()) == {"passed": True, "failed": []}
    for written in (None, "[1]", "{nope"):
        result.unlink(missing_ok=True)
        if written is not None:
            result.write_text(written)
        assert smoke.main(["report", str(result)]) == 0
        reported = json.loads((tmp_path / "out" / "output").read_text())
        assert reported["passed"] is False and reported["reason"].startswith("health: the smoke test left no result")


def test_golden_files_are_checked_line_by_line() -> None:
    assert [g.line for g in smoke.read_golden('{"request": 1, "expected": 2}\n\n{"request": 3, "expected": 4}\n')] == [
        1,
        3,
    ]
    with pytest.raises(ValueError, match=r"line 1: not JSON .*; line 2: expected an object with exactly"):
        smoke.read_golden('{nope\n{"request": 1}\n')
    with pytest.raises(ValueError, match="no golden requests"):
        smoke.read_golden("\n")


def test_the_digits_golden_set_is_valid_and_held_out() -> None:
    golden = smoke.read_golden(
        (Path(__file__).resolve().parents[2] / "examples/digits/serving/smoke.jsonl").read_text()
    )
    assert len(golden) == 40 and all(len(g.request["instances"][0]) == 64 for g in golden)


# --- on_build ------------------------------------------------------------------------------------------------


def _notice(
    status: str, result: dict[str, Any] | None, failed: str = "", at: str = delivery.VERDICT_STEP
) -> PubSubMessage:
    """Cloud Build's message about a build_image build: docker build, the smoke run, report, verdict (``at`` failed)."""
    steps = [{"name": delivery.DOCKER_BUILDER, "status": "SUCCESS"}]
    for step, name in (
        (delivery.RUN_STEP, delivery.DOCKER_BUILDER),
        (delivery.SMOKE_STEP, delivery.CHECKER_IMAGE),
        (delivery.VERDICT_STEP, delivery.CHECKER_IMAGE),
    ):
        steps.append({"name": name, "id": step, "status": (failed or "SUCCESS") if step == at else "SUCCESS"})
    outputs = ["", "", base64.b64encode(json.dumps(result).encode()).decode() if result else "", ""]
    build = {
        "id": "b1",
        "status": status,
        "tags": ["cd4ml-run-digits-20260101t000000z"],
        "images": ["r/digits:x"],
        "steps": steps,
        "results": {
            "buildStepOutputs": outputs,
            **({"images": [{"name": "r/digits:x", "digest": "sha256:" + "1" * 64}]} if status == "SUCCESS" else {}),
        },
        "logUrl": "https://log",
        "failureInfo": {
            "detail": 'Build step failure: build step 2 "r/digits:x" failed: step exited with non-zero status: 1'
        },
    }
    return PubSubMessage(
        message_id="m1",
        publish_time=datetime(2030, 1, 1, tzinfo=UTC),
        attributes={"buildId": "b1", "status": status},
        data=json.dumps(build).encode(),
    )


def _run() -> Run:
    return Run.from_document(
        {"run_id": "digits-20260101t000000z", "model": "digits", "status": "running", "events": []}
    )


PASSED: dict[str, Any] = {
    "passed": True,
    "checks": dict.fromkeys(smoke.CHECKS, True),
    "failed": [],
    "reason": "",
    "agreed": 39,
    "requests": 40,
    "agreement": 0.975,
    "min_agreement": 0.9,
    "latency_p50_ms": 12.5,
    "latency_max_ms": 40.1,
    "latency_budget_ms": 2000,
    "health_sha256": SHA,
    "expected_sha256": SHA,
    "failures": [],
    "startup_ms": 900.0,
}


def test_a_build_that_passed_its_smoke_test_records_it() -> None:
    outcome = delivery.build_reported(delivery.BuildNotice.of(_notice("SUCCESS", PASSED)), _run())
    assert outcome.type == events.IMAGE_BUILT
    assert outcome.record["smoke"] == PASSED


def test_a_failed_smoke_test_names_the_check_and_the_numbers_in_image_failed() -> None:
    failed = PASSED | {
        "passed": False,
        "failed": ["agreement"],
        "agreed": 0,
        "agreement": 0.0,
        "checks": PASSED["checks"] | {"agreement": False},
        "reason": "agreement: 0.00 < min_agreement 0.9 (0/40 golden requests agreed)",
    }
    outcome = delivery.build_reported(delivery.BuildNotice.of(_notice("FAILURE", failed, "FAILURE")), _run())
    assert outcome.type == events.IMAGE_FAILED
    assert outcome.data["failed_checks"] == ["agreement"]
    assert outcome.error == (
        "Cloud Build b1 ended FAILURE: smoke test failed: agreement: 0.00 < min_agreement 0.9 "
        "(0/40 golden requests agreed) (log: https://log)"
    )
    assert outcome.record["smoke"]["passed"] is False and outcome.record["smoke"]["agreement"] == 0.0


def test_a_failed_smoke_step_without_its_result_still_says_so() -> None:
    """Cloud Build documents no buildStepOutputs for a failed build: the step is named, the log pointed at."""
    outcome = delivery.build_reported(delivery.BuildNotice.of(_notice("FAILURE", None, "FAILURE")), _run())
    assert outcome.error is not None
    assert f"smoke test failed in step {delivery.VERDICT_STEP} (no result returned; see the log)" in outcome.error
    assert "smoke" not in outcome.record and "failed_checks" not in outcome.data
    # The run step fails when the container cannot start the checker (an image without python3: exit 127).
    notice = delivery.BuildNotice.of(_notice("FAILURE", None, "FAILURE", at=delivery.RUN_STEP))
    outcome = delivery.build_reported(notice, _run())
    assert outcome.error is not None
    assert f"smoke test failed in step {delivery.RUN_STEP} (no result returned; see the log)" in outcome.error


def test_outputs_that_are_not_a_smoke_result_are_ignored() -> None:
    message = _notice("SUCCESS", None)
    build = json.loads(message.data)
    build["results"]["buildStepOutputs"][2] = base64.b64encode(b"[1, 2]").decode()
    assert delivery.smoke_result(build) is None
    build["results"]["buildStepOutputs"][2] = "%%%"
    assert delivery.smoke_result(build) is None
    build["results"]["buildStepOutputs"] = []
    assert delivery.smoke_result(build) is None
    odd = PASSED | {"agreed": "39", "failures": ["x" * 1000] * 20}
    build["results"]["buildStepOutputs"] = ["", "", base64.b64encode(json.dumps(odd).encode()).decode()]
    kept = delivery.smoke_result(build)
    assert kept is not None and "agreed" not in kept and len(kept["failures"]) == 10


def test_the_manifest_refuses_a_golden_file_the_build_would_not_receive(tmp_path: Path) -> None:
    """The build context is the serving folder (pushed by `cd4ml model push`): the golden file must be in it, and
    valid before it is pushed."""
    import shutil

    import yaml
    from cd4ml_models import folder as models

    from cd4ml.errors import InvalidManifest

    folder = tmp_path / "digits"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "digits", folder)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    assert models.read(folder).smoke is not None
    manifest["serving"]["smoke"]["requests"] = "golden.jsonl"
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(InvalidManifest, match=r"golden\.jsonl is not inside the serving folder"):
        models.read(folder)
    manifest["serving"]["smoke"]["requests"] = "serving/smoke.jsonl"
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    (folder / "serving" / "smoke.jsonl").write_text('{"request": {}}\n')
    with pytest.raises(InvalidManifest, match='line 1: expected an object with exactly "request" and "expected"'):
        models.read(folder)
