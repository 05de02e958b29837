"""The Flask application: pages of the run ledger (runs, a run, a model, waiting on people); it only reads.

``create_app(ledger)`` takes any ``queries.Ledger``: the Firestore one when served, an in-memory one in tests.
Every page works without JavaScript; ``static/live.js`` refreshes the parts marked ``data-live`` while runs move.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, abort, render_template, request

from cd4ml import catalog
from cd4ml.events import parse_time
from cd4ml_ui import history, lineage, timeline
from cd4ml_ui.queries import Ledger

PAGE_SIZE = 50
#: Every status a run can have (schemas/run.schema.json), for the filter.
STATUSES = tuple(catalog.schema("run")["properties"]["status"]["enum"])
TERMINAL = ("succeeded", "failed", "rejected", "skipped")
#: Status as words and a symbol, so the table reads the same without colour.
STATUS_MARK = {
    "running": "▶",
    "awaiting_approval": "⏸",
    "succeeded": "✓",
    "failed": "✗",
    "rejected": "⊘",
    "skipped": "↷",
}
HISTORY_RUNS = 200


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _when(value: Any) -> str:
    """An RFC 3339 time as ``YYYY-MM-DD HH:MM:SS`` UTC; the raw text when it does not parse."""
    try:
        return parse_time(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(value or "—")


def _yaml(value: Any) -> str:
    """A manifest as the YAML its team wrote (key order kept)."""
    import yaml

    return str(yaml.safe_dump(value, sort_keys=False, allow_unicode=True))


def summary(run: Mapping[str, Any]) -> dict[str, Any]:
    """A row of the runs table: stage reached (the last event), duration, reason."""
    events = sorted(run.get("events") or [], key=lambda e: str(e.get("time", "")))
    duration = None
    if events:
        end = parse_time(str(events[-1]["time"])) if run.get("status") in TERMINAL else datetime.now(UTC)
        duration = (end - parse_time(str(events[0]["time"]))).total_seconds()
    error = run.get("error") or {}
    return {
        "run_id": run.get("run_id", ""),
        "model": run.get("model", ""),
        "trigger": run.get("trigger", ""),
        "status": run.get("status", ""),
        "created_at": _when(run.get("created_at")),
        "reached": timeline.short(str(events[-1]["type"])) if events else "—",
        "duration": _seconds(duration),
        "reason": str(error.get("message", "")),
        "reason_stage": str(error.get("stage", "")),
    }


def create_app(ledger: Ledger, *, poll_seconds: float = 3.0) -> Flask:
    """The web view over ``ledger``; ``poll_seconds`` is how often open pages refresh what is still moving."""
    app = Flask(__name__)
    app.config["POLL_MS"] = int(poll_seconds * 1000)
    app.jinja_env.filters["seconds"] = _seconds
    app.jinja_env.filters["when"] = _when
    app.jinja_env.filters["yaml"] = _yaml
    app.jinja_env.globals.update(STATUS_MARK=STATUS_MARK, STATUSES=STATUSES, poll_ms=app.config["POLL_MS"])

    @app.after_request
    def _headers(response: Any) -> Any:
        # Everything is served by the app itself: nothing may load from elsewhere.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok", 200

    @app.get("/")
    @app.get("/runs")
    def runs() -> str:
        model = request.args.get("model", "").strip() or None
        status = request.args.get("status", "").strip() or None
        after = request.args.get("after", "").strip() or None
        if status and status not in STATUSES:
            abort(400, f"unknown status {status!r}: one of {', '.join(STATUSES)}")
        page = ledger.page(model=model, status=status, limit=PAGE_SIZE, after=after)
        rows = [summary(r) for r in page.runs]
        models = sorted({*ledger.champions(), *(r["model"] for r in rows), *([model] if model else [])})
        template = "_runs_rows.html" if request.args.get("partial") == "rows" else "runs.html"
        return render_template(
            template, rows=rows, models=models, model=model, status=status, after=after, next_after=page.next_after
        )

    @app.get("/runs/<run_id>")
    def run(run_id: str) -> str:
        record = ledger.run(run_id)
        if record is None:
            abort(404, f"no run {run_id!r} in the ledger")
        cat = catalog.load()
        line = timeline.build(record, cat)
        template = "_run_body.html" if request.args.get("partial") == "body" else "run.html"
        return render_template(
            template,
            run=record,
            row=summary(record),
            timeline=line,
            bars=timeline.bars(line),
            lineage=lineage.nodes(record),
            live=record.get("status") not in TERMINAL,
        )

    @app.get("/models")
    def models() -> str:
        return render_template("models.html", champions=sorted(ledger.champions().items()))

    @app.get("/models/<model>")
    def model(model: str) -> str:
        champion = ledger.champions().get(model)
        runs = ledger.model_runs(model, HISTORY_RUNS)
        if not runs and champion is None:
            abort(404, f"no runs of model {model!r} in the ledger")
        promotions = ledger.promotions(model, 50)
        deployed = ledger.run(str(champion["run_id"])) if champion and champion.get("run_id") else None
        return render_template(
            "model.html",
            model=model,
            champion=champion,
            promotions=promotions,
            plot=history.plot(runs, (champion or {}).get("run_id")),
            runs=runs,
            manifest=(deployed or {}).get("manifest"),
        )

    @app.get("/waiting")
    def waiting() -> str:
        now = datetime.now(UTC)
        items: list[dict[str, Any]] = []
        for r in ledger.awaiting(200):
            approval = r.get("approval") or {}
            left: float | None = None
            with contextlib.suppress(TypeError, ValueError):
                left = (parse_time(str(approval.get("expires_at"))) - now).total_seconds()
            items.append({"run": r, "approval": approval, "left": left})
        items.sort(key=lambda i: float("inf") if i["left"] is None else float(i["left"]))
        return render_template("waiting.html", items=items)

    @app.errorhandler(400)
    @app.errorhandler(404)
    def _problem(error: Any) -> tuple[str, int]:
        return render_template("problem.html", error=error), error.code

    return app
