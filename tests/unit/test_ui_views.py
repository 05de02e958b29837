"""The web view's pages over an in-memory ledger, through Flask's test client: what a person reading them sees."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cd4ml_ui.app import PAGE_SIZE, create_app
from cd4ml_ui.queries import MemoryLedger
from flask.testing import FlaskClient

from cd4ml import catalog

START = datetime(2026, 11, 30, 5, 48, 27, tzinfo=UTC)
FN = "//cloudfunctions.googleapis.com/projects/p/locations/us-central1/functions/"
DIGEST = "sha256:88d6c64469886b246be9c1c58e73e4ed059e40a24f66f55dc26fdca6d170d754"
JOB = "projects/p/locations/us-central1/customJobs/1796017709474166"


def _t(seconds: float, base: datetime = START) -> str:
    return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _event(kind: str, at: float, stage: str | None, base: datetime = START) -> dict[str, Any]:
    return {
        "type": f"cd4ml.{kind}.v1",
        "id": f"{kind}-{at}",
        "time": _t(at, base),
        "source": FN + stage if stage else "//cli",
    }


#: A full run's events as the functions stamp them: (event, seconds after the request, emitting stage).
SUCCEEDED_PATH = (
    ("run.requested", 0.0, None),
    ("data.fetched", 1.1, "fetch_data"),
    ("training.submitted", 1.9, "submit_training"),
    ("training.completed", 9.4, "watch_training"),
    ("evaluation.passed", 9.8, "evaluate"),
    ("delivery.cleared", 10.0, "clear_delivery"),
    ("image.built", 26.3, "on_build"),
    ("image.pushed", 26.4, "on_push"),
    ("canary.triggered", 26.7, "trigger_canary"),
    ("canary.succeeded", 29.4, "watch_canary"),
    ("model.promoted", 29.7, "promote"),
)


def run_record(
    model: str = "digits",
    n: int = 0,
    *,
    status: str = "succeeded",
    accuracy: float = 0.9778,
    path: Any = SUCCEEDED_PATH,
) -> dict[str, Any]:
    """A run record shaped like the ledger's (schemas/run.schema.json), ``n`` minutes after START."""
    base = START + timedelta(minutes=n)
    run_id = f"{model}-{base:%Y%m%dt%H%M%S}z"
    record: dict[str, Any] = {
        "run_id": run_id,
        "model": model,
        "status": status,
        "trigger": "manual",
        "scheduled_time": _t(0, base),
        "created_at": _t(0, base),
        "updated_at": _t(path[-1][1], base),
        "events": [_event(k, at, s, base) for k, at, s in path],
        "manifest": {"name": model, "evaluation": {"metric": "accuracy", "threshold": 0.9}},
        "dataset": {"uri": f"gs://d/datasets/{model}/{'1b' * 32}/", "sha256": "1b" * 32, "rows": 1797, "bytes": 267082},
        "training": {"job": f"{JOB}{n}", "state": "JOB_STATE_SUCCEEDED", "active": False},
        "model_artifact": {"uri": f"gs://a/runs/{run_id}/model/model.joblib", "sha256": "77" * 32},
        "evaluation": {
            "passed": accuracy >= 0.9,
            "metrics": {"accuracy": accuracy, "f1_macro": accuracy - 0.0001},
            "gate": {
                "metric": "accuracy",
                "threshold": 0.9,
                "max_regression": 0.02,
                "champion_value": 0.9701,
                "champion_run": "digits-20261129t000000z",
                "value": accuracy,
                "passed": accuracy >= 0.9,
            },
            "reasons": [] if accuracy >= 0.9 else [f"accuracy {accuracy:.4f} is below the threshold 0.9000"],
        },
    }
    if status == "succeeded":
        record |= {
            "image": {
                "progress": {"QUEUED": _t(10.4, base), "WORKING": _t(10.5, base)},
                "build_id": f"6c5310e4-{n}",
                "digest": DIGEST,
                "reference": f"r/cd4ml/{model}@{DIGEST}",
                "status": "SUCCESS",
            },
            "smoke": {"passed": True, "requests": 40, "agreed": 38, "checks": {"health": True, "agreement": True}},
            "canary": {
                "execution_id": f"01M8NFZGHWXJDGE14D7THKX6A{n}",
                "pipeline": f"{model}-canary",
                "verdict": "succeeded",
            },
            "promotion": {"alias": f"{model}:champion", "digest": DIGEST, "at": _t(29.7, base)},
            "cache": {"training": {"decision": "reused", "reused_from": "digits-20261129t000000z", "key": "ab" * 32}},
        }
    return record


FAILED_PATH = (*SUCCEEDED_PATH[:4], ("evaluation.failed", 9.8, "evaluate"))


def failed_record(n: int = 1) -> dict[str, Any]:
    record = run_record("digits", n, status="failed", accuracy=0.5, path=FAILED_PATH)
    record["error"] = {"stage": "evaluate", "message": "accuracy 0.5000 is below the threshold 0.9000"}
    record["rejected_messages"] = [
        {"stage": "evaluate", "message_id": "m-17", "reason": "ce-type is missing", "at": _t(5, START)}
    ]
    return record


def _client(runs: list[dict[str, Any]], champions: dict[str, Any] | None = None) -> FlaskClient:
    return create_app(MemoryLedger(runs, champions)).test_client()


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_runs_table_lists_runs_newest_first_with_status_stage_and_reason() -> None:
    ok, bad = run_record(n=0), failed_record(n=5)
    page = _client([ok, bad]).get("/runs").get_data(as_text=True)
    assert page.index(bad["run_id"]) < page.index(ok["run_id"])
    row = _text(page.split(f'data-run="{bad["run_id"]}"')[1].split("</tr>")[0])
    assert "✗ failed" in row and "evaluation.failed" in row and "9.8 s" in row
    assert "evaluate: accuracy 0.5000 is below the threshold 0.9000" in row
    assert f'href="/runs/{ok["run_id"]}"' in page and 'href="/models/digits"' in page


def test_the_runs_table_filters_by_model_and_status() -> None:
    runs = [run_record("digits", 0), failed_record(1), run_record("fraud", 2)]
    client = _client(runs)
    by_model = client.get("/runs?model=fraud").get_data(as_text=True)
    assert "fraud-2026" in by_model and "digits-2026" not in by_model
    by_status = client.get("/runs?status=failed").get_data(as_text=True)
    assert failed_record(1)["run_id"] in by_status and runs[0]["run_id"] not in by_status
    assert "fraud-2026" not in client.get("/runs?model=fraud&status=failed").get_data(as_text=True)


def test_an_unknown_status_is_refused_with_what_to_pick() -> None:
    answer = _client([]).get("/runs?status=done")
    assert answer.status_code == 400
    assert "unknown status &#39;done&#39;: one of running, awaiting_approval, succeeded" in answer.get_data(
        as_text=True
    )


def test_the_runs_table_pages_through_older_runs() -> None:
    runs = [run_record("digits", n) for n in range(PAGE_SIZE + 5)]
    client = _client(runs)
    first = client.get("/runs").get_data(as_text=True)
    assert first.count('<tr data-run="') == PAGE_SIZE
    older = re.search(r'<a rel="next" href="([^"]+)"', first)
    assert older, "no link to older runs"
    second = client.get(older[1].replace("&amp;", "&")).get_data(as_text=True)
    assert second.count('<tr data-run="') == 5
    assert runs[0]["run_id"] in second and runs[0]["run_id"] not in first  # the oldest run is on page two
    assert 'rel="next"' not in second


def test_the_rows_fragment_is_what_live_pages_poll() -> None:
    client = _client([run_record()])
    page = client.get("/runs").get_data(as_text=True)
    assert 'data-live="/runs?partial=rows"' in page
    fragment = client.get("/runs?partial=rows").get_data(as_text=True)
    assert "<html" not in fragment and run_record()["run_id"] in fragment


def test_the_run_page_shows_each_stage_of_the_catalog_it_reached_with_start_and_duration() -> None:
    record = run_record()
    page = _client([record]).get(f"/runs/{record['run_id']}").get_data(as_text=True)
    stages = re.findall(r'<tr data-stage="([a-z_]+)">', page)
    assert stages == [
        "request",
        "fetch_data",
        "submit_training",
        "watch_training",
        "evaluate",
        "clear_delivery",
        "build_image",
        "on_build",
        "on_push",
        "trigger_canary",
        "watch_canary",
        "promote",
    ]
    known = {s.name for s in catalog.load().stages} | {"request"}
    assert set(stages) <= known
    watch = _text(page.split('data-stage="watch_training"')[1].split("</tr>")[0])
    assert "+1.9 s" in watch and "7.5 s" in watch  # waited from training.submitted (1.9 s) to completed (9.4 s)
    assert page.count("<rect x=") == len(stages)  # one bar per stage in the strip
    build = _text(page.split('data-stage="build_image"')[1].split("</tr>")[0])
    assert "+10.0 s" in build and "0.4 s" in build and "build submitted" in build  # delivery.cleared → QUEUED
    on_build = _text(page.split('data-stage="on_build"')[1].split("</tr>")[0])
    assert "+10.4 s" in on_build and "15.9 s" in on_build  # waited on the build from its submission


def test_the_run_page_shows_the_lineage_with_identifiers_and_twin_run() -> None:
    record = run_record(n=3)
    page = _client([record]).get(f"/runs/{record['run_id']}").get_data(as_text=True)
    nodes = re.findall(r'data-node="([a-z ]+)"', page)
    assert nodes == ["dataset", "training job", "model", "build", "image", "canary execution", "alias move"]
    lineage = page.split('class="lineage"')[1].split("</ol>")[0]
    for identifier in (
        "1b" * 32,
        f"{JOB}3",
        "77" * 32,
        "6c5310e4-3",
        DIGEST,
        "01M8NFZGHWXJDGE14D7THKX6A3",
        "digits:champion",
    ):
        assert identifier in lineage
    assert 'reused from run <a href="/runs/digits-20261129t000000z">' in lineage
    assert f"cd4ml status {record['run_id']}" in page


def test_the_run_page_compares_with_the_champion_and_shows_smoke_canary_and_cache() -> None:
    record = run_record()
    text = _text(_client([record]).get(f"/runs/{record['run_id']}").get_data(as_text=True))
    assert "accuracy (gate) 0.9778 0.9701" in text
    assert "Passed: 38/40 golden requests agreed" in text
    assert "Verdict succeeded" in text
    assert "training: reused from run digits-20261129t000000z" in text


def test_a_failed_run_shows_its_reason_and_rejected_messages() -> None:
    record = failed_record()
    text = _text(_client([record]).get(f"/runs/{record['run_id']}").get_data(as_text=True))
    assert "Why it stopped evaluate : accuracy 0.5000 is below the threshold 0.9000" in text
    assert "evaluate m-17 ce-type is missing" in text
    assert "Stages this run did not reach (or that are not on its path): " in text and "promote" in text


def test_a_running_run_polls_and_a_finished_one_does_not() -> None:
    running = run_record(status="running", path=SUCCEEDED_PATH[:3])
    done = run_record(n=1)
    client = _client([running, done])
    assert 'data-live="/runs/' in client.get(f"/runs/{running['run_id']}").get_data(as_text=True)
    finished = client.get(f"/runs/{done['run_id']}").get_data(as_text=True)
    assert "data-live=" not in finished and "data-ended" in finished


def test_an_unknown_run_is_a_404_naming_it() -> None:
    answer = _client([]).get("/runs/nope-20260101t000000z")
    assert answer.status_code == 404 and "no run &#39;nope-20260101t000000z&#39; in the ledger" in answer.get_data(
        as_text=True
    )


def test_the_model_page_plots_a_point_per_evaluated_run_and_marks_champion_and_threshold() -> None:
    runs = [run_record(n=0, accuracy=0.95), failed_record(n=1), run_record(n=2, accuracy=0.97)]
    champion = {
        "run_id": runs[2]["run_id"],
        "digest": DIGEST,
        "since": _t(150),
        "metrics": {"accuracy": 0.97},
        "alias": "digits:champion",
    }
    page = _client(runs, {"digits": champion}).get("/models/digits").get_data(as_text=True)
    plot = page.split('<svg class="plot"')[1].split("</svg>")[0]
    assert sorted(re.findall(r'data-run="([^"]+)"', plot)) == sorted(r["run_id"] for r in runs)
    assert f'class="point champion" data-run="{runs[2]["run_id"]}"' in plot
    assert 'class="point failed"' in plot and 'class="threshold"' in plot and "threshold 0.9" in plot
    text = _text(page)
    assert f"Image digest {DIGEST}" in text and "Since (UTC) 2026-11-30 05:50:57" in text
    assert "evaluation:\n  metric: accuracy\n  threshold: 0.9" in page  # the deployed manifest, from the champion's run


def test_the_champion_history_lists_promotions_latest_first() -> None:
    runs = [run_record(n=0), run_record(n=10), failed_record(n=5)]
    runs[1]["promotion"]["previous_run_id"] = runs[0]["run_id"]
    page = _client(runs).get("/models/digits").get_data(as_text=True)
    history = page.split('class="history"')[1].split("</table>")[0]
    assert history.index(runs[1]["run_id"]) < history.index(runs[0]["run_id"])
    assert failed_record(5)["run_id"] not in history and "no champion before" in history


def test_waiting_on_people_lists_what_the_approvers_need_and_the_expiry() -> None:
    record = run_record(
        status="awaiting_approval", path=(*SUCCEEDED_PATH[:5], ("approval.requested", 10.0, "clear_delivery"))
    )
    expires = datetime.now(UTC) + timedelta(hours=5)
    record["approval"] = {
        "approvers": ["user:lead@example.com"],
        "requested_at": _t(10),
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "metrics": {"accuracy": 0.9778},
        "gate": record["evaluation"]["gate"],
    }
    page = _client([record, run_record(n=1)]).get("/waiting").get_data(as_text=True)
    text = _text(page)
    assert page.count("<article") == 1
    assert "user:lead@example.com" in text and "accuracy 0.9778" in text and "in 4 h 59 min" in text
    assert f"cd4ml approve {record['run_id']}" in text
    assert "<form" not in page and 'method="post"' not in page  # read-only: no way to decide from the page


def test_every_page_loads_only_from_the_app_itself() -> None:
    record = run_record()
    client = _client([record], {"digits": {"run_id": record["run_id"], "digest": DIGEST}})
    for path in ("/runs", f"/runs/{record['run_id']}", "/models", "/models/digits", "/waiting"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        html = answer.get_data(as_text=True)
        assert not re.search(r'(src|href)="(https?:)?//', html), path  # no CDN, no other origin
        assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert client.get(asset).status_code == 200, asset


@pytest.mark.parametrize("path", ["/runs", "/models/digits"])
def test_pages_have_a_skip_link_landmarks_and_text_status(path: str) -> None:
    page = _client([run_record(), failed_record()]).get(path).get_data(as_text=True)
    assert '<a class="skip" href="#main">' in page and '<main id="main"' in page and "<nav" in page
    if path == "/runs":
        assert "✓ succeeded" in _text(page) and "✗ failed" in _text(page)  # readable without colour


def test_cd4ml_ui_is_a_command_and_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from cd4ml_cli.main import main, parser
    from cd4ml_ui import cli

    assert parser().parse_args(["ui", "--port", "8781"]).func is cli.command
    monkeypatch.delenv("CD4ML_PROJECT", raising=False)
    monkeypatch.setenv("CD4ML_STATE_DIR", str(tmp_path))  # no local stack running there
    assert main(["ui", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cd4ml: no project: set CD4ML_PROJECT (and credentials), or start the local stack with `cd4ml local up`"
    )


def test_a_run_whose_gate_names_no_champion_still_renders() -> None:
    record = run_record()
    record["evaluation"]["gate"] = {"metric": "accuracy", "threshold": 0.9}
    answer = _client([record]).get(f"/runs/{record['run_id']}")
    assert answer.status_code == 200
    assert "accuracy (gate) 0.9778 —" in _text(answer.get_data(as_text=True))
