"""The ``cd4ml`` command: run a model, follow or inspect runs, push models; plugins add more (``cd4ml local``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cd4ml.errors import Cd4mlError
from cd4ml_cli import reach

if TYPE_CHECKING:
    from cd4ml.settings import Settings

# Client libraries are imported by the commands that use them, not here: a fresh `cd4ml run TYPO` must answer in
# well under two seconds, and google.cloud.* with gRPC and protobuf take longer than that on a busy machine.

PLUGIN_GROUP = "cd4ml.cli"
#: Plugins that ship with the command itself (same shape as the entry points): ``cd4ml ui``.
BUILT_IN_PLUGINS = ("cd4ml_ui.cli",)


def _plugins() -> list[Any]:
    """Modules registered under the ``cd4ml.cli`` entry point group: ``register(subparsers)``, ``environment()``."""
    from importlib import import_module
    from importlib.metadata import entry_points

    found = []
    for name in BUILT_IN_PLUGINS:
        try:
            found.append(import_module(name))
        except ImportError:  # its web framework is not installed here
            continue
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            found.append(entry.load())
        except ImportError:  # a plugin whose package is not installed here adds nothing
            continue
    return found


def _use_plugin_environment_if_unconfigured() -> None:
    """Without CD4ML_PROJECT in the environment, use the one a plugin offers (the running local stack)."""
    if os.environ.get("CD4ML_PROJECT"):
        return
    for plugin in _plugins():
        env = getattr(plugin, "environment", lambda: None)()
        if env:
            os.environ.update(env)
            return


def _settings() -> Settings:
    from cd4ml.settings import Settings

    _use_plugin_environment_if_unconfigured()
    env = {**os.environ}
    if not env.get("CD4ML_PROJECT"):
        raise Cd4mlError(
            "no project: set CD4ML_PROJECT (and credentials), or start the local stack with `cd4ml local up`"
        )
    settings = Settings.from_env(env)
    reach.probe_emulators(env)
    return settings


_FIRST = (
    "run_id",
    "model",
    "status",
    "error",
    "trigger",
    "scheduled_time",
    "created_at",
    "updated_at",
    "events",
    "dataset",
    "training",
    "model_artifact",
    "evaluation",
    "image",
    "canary",
)


def ordered(record: dict[str, Any]) -> dict[str, Any]:
    """The run record with its most telling fields first, for people reading JSON."""
    return {
        **{k: record[k] for k in _FIRST if k in record},
        **{k: v for k, v in sorted(record.items()) if k not in _FIRST},
    }


def known_models(settings: Settings) -> list[str] | None:
    """The models whose manifest is in the artifact bucket; None when the caller may not list them (the run request
    itself is the check then: fetch_data dead-letters an unknown model)."""
    from cd4ml_cli import known_models as listing

    return listing.names(settings.artifact_bucket, os.environ, reach.CALL_TIMEOUT, reach.fix())


def require_model(settings: Settings, model: str) -> None:
    """Cd4mlError at once for a model with no manifest in the artifact bucket (a typo waited 600 s before)."""
    import difflib

    known = known_models(settings)
    if known is None or model in known:
        return
    close = difflib.get_close_matches(model, known, n=1)
    raise Cd4mlError(
        f"no model {model!r} in gs://{settings.artifact_bucket}/manifests/"
        + (f": did you mean {close[0]!r}?" if close else f" (known: {', '.join(known) or 'none'}).")
        + " A new model is added with `cd4ml model push FOLDER`"
    )


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings()
    require_model(settings, args.model)
    from cd4ml import ledger  # after the checks: importing the event schemas costs a second on a busy machine
    from cd4ml.events import RUN_REQUESTED, Event, now

    scheduled = now().replace(microsecond=0)
    run_id = ledger.run_id(args.model, scheduled)
    from cd4ml.bus import Bus
    from cd4ml.events import format_time

    event = Event.new(
        RUN_REQUESTED,
        run_id,
        {
            "model": args.model,
            "scheduled_time": format_time(scheduled),
            "trigger": "manual",
            "requested_by": os.environ.get("USER", "cli"),
            **({"no_cache": True} if args.no_cache else {}),
        },
        source=f"//cd4ml/cli/{os.uname().nodename}",
    )
    Bus(settings.project).publish(event)
    if not args.wait:
        print(json.dumps({"run_id": run_id}) if args.json else run_id)
        return 0
    print(run_id, file=sys.stderr if args.json else sys.stdout, flush=True)
    from cd4ml_cli.follow import follow

    return follow(settings, run_id, args.timeout, args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from cd4ml import clients, ledger
    from cd4ml_cli.follow import follow, read_run
    from cd4ml_cli.timeline import render

    settings = _settings()
    book = ledger.Ledger.firestore(clients.firestore_client(settings))
    if args.run:
        if args.follow:
            return follow(settings, args.run, args.timeout, args.json)
        record = read_run(clients.firestore_client(settings), args.run)
        if record is None:
            print(f"cd4ml: no run {args.run!r} in the ledger: `cd4ml status` lists the recent runs", file=sys.stderr)
            return 1
        print(json.dumps(ordered(record), indent=2, default=str) if args.json else render(record))
        return 0
    runs = book.recent(args.limit, args.model)
    if args.json:
        print(json.dumps([ordered(r) for r in runs], indent=2, default=str))
        return 0
    if not runs:
        print("no runs yet")
    for run in runs:
        events = run.get("events") or []
        last = events[-1]["type"].removeprefix("cd4ml.").removesuffix(".v1") if events else "-"
        print(f"{run['run_id']:<36} {run.get('status', '?'):<10} {last}")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Show what stages rejected or gave up on, from the dead-letter hold subscriptions; leaves them there."""
    from cd4ml import catalog
    from cd4ml_cli.deadletters import held_by_stage
    from cd4ml_cli.deadletters import subscriber as _subscriber

    settings = _settings()
    subscriber = _subscriber()
    stages = [args.stage] if args.stage else [s.name for s in catalog.load().stages]
    if args.stage and args.stage not in {s.name for s in catalog.load().stages}:
        names = ", ".join(s.name for s in catalog.load().stages)
        raise Cd4mlError(f"no stage {args.stage!r}: --stage takes one of {names}")
    found = 0
    for stage, held in held_by_stage(subscriber, settings.project, stages).items():
        for received in held[: args.limit or None]:
            found += 1
            m = received.message
            attrs = dict(m.attributes)
            print(
                json.dumps(
                    {
                        "stage": stage,
                        "message_id": attrs.get("cd4ml-original-message-id", m.message_id),
                        "published": m.publish_time.isoformat(),
                        "run_id": attrs.get("ce-subject", ""),
                        "type": attrs.get("ce-type", ""),
                        "error": attrs.get("cd4ml-error", "(delivery attempts exhausted)"),
                        "attributes": attrs,
                        "bytes": len(m.data),
                        "data": m.data[:2000].decode("utf-8", "replace"),
                    }
                )
                if args.json
                else f"{stage:<16} {m.publish_time:%Y-%m-%d %H:%M:%S}  {attrs.get('ce-subject', '-')[:40]:<28} "
                f"{attrs.get('cd4ml-error', '(delivery attempts exhausted)')}"
            )
    if not found and not args.json:
        print("no dead letters")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Each model's champion: which run, which image (by digest), its metrics, since when."""
    settings = _settings()
    from cd4ml import clients, ledger

    db = clients.firestore_client(settings)
    champions = []
    for doc in db.collection(ledger.MODELS).stream():
        champion = (doc.to_dict() or {}).get("champion") or {}
        champions.append({"model": doc.id, **champion})
    if args.json:
        print(json.dumps(champions, indent=2, default=str))
        return 0
    if not champions:
        print("no champions yet: a run's model becomes champion when its canary succeeds and it is promoted")
    for c in champions:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in (c.get("metrics") or {}).items())
        print(
            f"{c['model']:<20} {c.get('run_id', '?'):<36} {str(c.get('digest', ''))[:19]:<20} since "
            f"{c.get('since', '?')}  {metrics}"
        )
    return 0


#: What a dead-letter copy adds to the original message; a replay sends the original attributes only.
_DEAD_LETTER_ATTRIBUTES = ("cd4ml-",)


def cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    """Republish held messages to their stage's input topic (all, one stage, or one id), then acknowledge them."""
    from cd4ml import catalog
    from cd4ml_cli.deadletters import held_messages
    from cd4ml_cli.deadletters import subscriber as _subscriber

    if not (args.all or args.stage or args.id):
        raise Cd4mlError("say what to replay: --all, --stage STAGE or --id MESSAGE_ID")
    settings = _settings()
    subscriber = _subscriber()
    from cd4ml.clients import publisher_client

    publisher = publisher_client()
    replayed = 0
    for stage in [args.stage] if args.stage else [s.name for s in catalog.load().stages]:
        topic = publisher.topic_path(settings.project, catalog.load().stage(stage).trigger_topic)
        path = subscriber.subscription_path(settings.project, catalog.dead_letter_hold(stage))
        for received in held_messages(subscriber, path):
            m = received.message
            attrs = dict(m.attributes)
            if args.id and args.id not in (attrs.get("cd4ml-original-message-id"), m.message_id):
                continue
            original = {k: v for k, v in attrs.items() if not k.startswith(_DEAD_LETTER_ATTRIBUTES)}
            back = topic
            if original.get("ce-type") in catalog.load().stage(stage).triggers[1:]:  # notify: the topic it came from
                back = publisher.topic_path(settings.project, catalog.topic_id(original["ce-type"]))
            message_id = publisher.publish(back, m.data, **original).result(timeout=30)
            subscriber.acknowledge(request={"subscription": path, "ack_ids": [received.ack_id]})
            replayed += 1
            print(
                f"{stage:<16} {attrs.get('cd4ml-original-message-id', m.message_id)} → {message_id} "
                f"on {back.rsplit('/', 1)[1]}"
            )
    print(f"{replayed} replayed" if replayed else "nothing to replay", file=sys.stderr)
    return 0 if replayed or not args.id else 1


def cmd_logs(args: argparse.Namespace) -> int:
    """The log lines the functions wrote about one run (local stack: its log files; else Cloud Logging)."""
    from cd4ml_cli import run_logs

    settings = _settings()
    local = [
        Path(folder)
        for plugin in _plugins()
        if (folder := getattr(plugin, "log_dir", lambda: None)())
        and (getattr(plugin, "environment", lambda: None)() or {}).get("CD4ML_PROJECT") == settings.project
    ]
    if local:  # the project is the running local stack's: its functions' log files
        entries = run_logs.local_lines(local[0], args.run, args.stage)
    else:
        entries = run_logs.cloud_lines(settings.project, args.run, args.stage)
    for line in run_logs.render(entries):
        print(line)
    if not entries:
        print(f"no log lines for run {args.run!r}" + (f" in stage {args.stage}" if args.stage else ""), file=sys.stderr)
        return 1
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    """``cd4ml approve|reject RUN --reason …``: a person's decision on a run awaiting approval."""
    from cd4ml_cli import approvals

    return approvals.decide(_settings(), args.run, args.decision, args.reason, args.wait)


def cmd_model_push(args: argparse.Namespace) -> int:
    from cd4ml_models import folder as models

    folder = Path(args.folder)
    if not os.environ.get("CD4ML_PROJECT"):  # no project named: the running local stack, if a plugin has one
        for plugin in _plugins():
            name = getattr(plugin, "push_model", lambda _: None)(folder)
            if name:
                manifest = models.read(folder)
                seeded = "source data seeded from seed_data.py" if (folder / "seed_data.py").is_file() else "no data"
                trainer = (
                    "trainer image (built by the local Cloud Build when its folder changed)"
                    if manifest.training.container_dockerfile
                    else "trainer package"
                )
                print(
                    f"model {name} pushed to the local stack: manifest, {trainer} and serving files; {seeded}; "
                    + (
                        f"canary pipeline {manifest.canary_pipeline or name + '-canary'} on the local Gate; "
                        if manifest.canary_application
                        else "no canary (promoted once the smoke test passes); "
                    )
                    + f"scheduled {manifest.schedule!r} ({manifest.time_zone}). `cd4ml run {name} --wait` runs it now"
                )
                return 0
    from cd4ml import clients

    settings = _settings()
    pushed = models.push(clients.storage_client(settings), Path(args.folder), settings.artifact_bucket, settings)
    print(
        f"model {pushed.manifest.name}: manifest {pushed.manifest_uri}"
        + (f", trainer package {pushed.package_uri}" if pushed.package_uri else "")
        + (
            f", trainer image {pushed.trainer_image.reference} ({pushed.trainer_image.digest}, "
            + ("unchanged since " if pushed.trainer_image.reused else "")
            + f"Cloud Build build {pushed.trainer_image.build_id})"
            if pushed.trainer_image
            else ""
        )
    )
    _policy_note(pushed.manifest)
    return 0


def cmd_model_train(args: argparse.Namespace) -> int:
    """Train a model folder on this machine as Vertex AI would, and print its metrics."""
    from cd4ml_cli import local_training

    if not args.local:
        raise Cd4mlError(
            "training outside a run is local only: add --local (a run trains on Vertex: `cd4ml run MODEL`)"
        )
    keep = Path(args.keep) if args.keep else None
    return local_training.command(Path(args.folder), Path(args.data) if args.data else None, keep)


def cmd_data_upload(args: argparse.Namespace) -> int:
    """Upload a file or a folder's files to where the model's manifest says its source data is."""
    from cd4ml import clients
    from cd4ml.errors import InvalidManifest
    from cd4ml.manifest import loads, manifest_object, resolve_gcs

    settings = _settings()
    source = Path(args.path)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    if not files:
        raise Cd4mlError(f"nothing to upload at {source}: give a file, or a folder with files in it")
    require_model(settings, args.model)
    storage = clients.storage_client(settings)
    blob = storage.bucket(settings.artifact_bucket).blob(manifest_object(args.model))
    try:
        manifest = loads(blob.download_as_text(timeout=reach.CALL_TIMEOUT), origin=f"manifest of {args.model}")
    except InvalidManifest as bad:
        raise Cd4mlError(f"{bad.message}; push a valid one with `cd4ml model push FOLDER`") from None
    bucket, _, prefix = resolve_gcs(manifest.data_source, settings.data_bucket).removeprefix("gs://").partition("/")
    for file in files:
        name = prefix.rstrip("/") + "/" + (file.name if file == source else file.relative_to(source).as_posix())
        storage.bucket(bucket).blob(name).upload_from_filename(str(file), timeout=120)
        print(f"gs://{bucket}/{name}  {file.stat().st_size} bytes")
    trigger = (manifest.raw.get("trigger") or {}).get("on_new_data")
    print(
        f"{len(files)} file(s) uploaded to gs://{bucket}/{prefix}: "
        + (
            f"a run starts once no upload came for {trigger['quiet_seconds']} s"
            if trigger
            else f"the next run (`cd4ml run {args.model}`, or its schedule) trains on them"
        ),
        file=sys.stderr,
    )
    return 0


TEMPLATES = ("sklearn-classifier", "sklearn-regressor", "container")


def cmd_model_init(args: argparse.Namespace) -> int:
    """A new model folder from a template: it passes `model check` and runs end to end as made."""
    from cd4ml_cli import templates

    folder = templates.create(args.name, args.template, Path(args.dir) if args.dir else Path(args.name))
    train = "" if args.template == "container" else f"`cd4ml model train {folder} --local`, "
    push = "(builds its trainer image) " if args.template == "container" else ""
    print(
        f"model {args.name} ({args.template}) made in {folder}. Next: `cd4ml model check {folder}`, "
        f"{train}`cd4ml model push {folder}` {push}, `cd4ml run {args.name} --wait`".replace(" ,", ",")
    )
    return 0


def _policy_note(manifest: Any) -> None:
    """Say (one line) when the manifest's approval block is not what the deployed approval policy enforces."""
    from cd4ml_cli.approvals import policy_note

    note = policy_note(manifest)
    if note:
        print(note)


def cmd_model_check(args: argparse.Namespace) -> int:
    from cd4ml_models import folder as models

    manifest = models.check(Path(args.folder))
    print(
        f"model {manifest.name}: manifest is valid (schedule {manifest.schedule!r} {manifest.time_zone}); "
        + ("executor image, trainer module and " if manifest.training.executor_image else "")
        + ("trainer Dockerfile and " if manifest.training.container_dockerfile else "")
        + ("smoke requests found" if manifest.smoke else "no smoke test")
    )
    _policy_note(manifest)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cd4ml",
        description="Continuous training and delivery of ML models on Google Cloud.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "a first model, on the local stack:\n"
            "  cd4ml local up                          start the emulators, stand-ins and functions\n"
            "  cd4ml model init NAME                   a model folder from a template (--template ...)\n"
            "  cd4ml model train NAME --local          its trainer as Vertex AI runs it: metrics\n"
            "  cd4ml model push NAME                   register it (data, canary pipeline, schedule)\n"
            "  cd4ml run NAME --wait                   a run, followed live\n"
            "  cd4ml status RUN | logs RUN | dead-letters   what happened, and why\n"
            "Without CD4ML_PROJECT the command talks to the running local stack; with it, to that project."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="request a run of a model now")
    run.add_argument("model")
    run.add_argument("--wait", action="store_true", help="follow the run live; exit 0 only if it succeeds")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    run.add_argument("--json", action="store_true", help="print the final run record as JSON on stdout")
    run.add_argument(
        "--no-cache", action="store_true", help="train, build and deliver anew (no training or build cache, no skip)"
    )
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="timeline of a run, or the recent runs")
    status.add_argument("run", nargs="?")
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=int, default=10)
    status.add_argument("--model")
    status.add_argument("--follow", action="store_true", help="with RUN: follow it live until it ends (as run --wait)")
    status.add_argument("--timeout", type=float, default=3600.0, help="--follow: seconds to follow (default 3600)")
    status.set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="the functions' log lines about one run, in time order")
    logs.add_argument("run")
    logs.add_argument("--stage", help="one stage's lines only")
    logs.set_defaults(func=cmd_logs)
    dead = sub.add_parser("dead-letters", help="messages the stages rejected or gave up on (left in place)")
    dead.add_argument("--stage", help="one stage (default: every stage)")
    dead.add_argument("--limit", type=int, default=0, help="at most this many per stage (default: every held message)")
    dead.add_argument("--json", action="store_true", help="one JSON object per message, with its data")
    dead.set_defaults(func=cmd_dead_letters)
    dead_sub = dead.add_subparsers(dest="action")
    replay = dead_sub.add_parser("replay", help="republish held messages to their stage's input topic, once fixed")
    replay.add_argument("--stage", help="the held messages of one stage")
    replay.add_argument("--id", help="one message, by its original message id")
    replay.add_argument("--all", action="store_true", help="every held message of every stage")
    replay.set_defaults(func=cmd_dead_letters_replay)
    for verb, says in (("approve", "deliver"), ("reject", "end rejected")):
        decide = sub.add_parser(verb, help=f"{verb} a run awaiting approval: {says} it (approvers only; recorded)")
        decide.add_argument("run")
        decide.add_argument("--reason", required=True, help="why, kept on the run and in the notifications")
        decide.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the outcome (default 30)")
        decide.set_defaults(func=cmd_decide, decision=verb)
    champions = sub.add_parser("models", help="each model's champion: run, image digest, metrics, since when")
    champions.add_argument("--json", action="store_true")
    champions.set_defaults(func=cmd_models)
    model = sub.add_parser("model", help="make, check, train locally or push a model folder (manifest.yaml + trainer)")
    model_sub = model.add_subparsers(dest="action", required=True)
    push = model_sub.add_parser("push", help="validate and upload the manifest and trainer package")
    push.add_argument("folder")
    push.set_defaults(func=cmd_model_push)
    check = model_sub.add_parser(
        "check",
        help="validate the manifest and what can be known before a run: the executor image is Vertex AI's, the "
        "trainer module is in the package, the serving and smoke files exist",
    )
    check.add_argument("folder")
    check.set_defaults(func=cmd_model_check)
    train = model_sub.add_parser(
        "train",
        help="run the folder's trainer here as Vertex AI would (same package, variables, executor image's "
        "libraries) on a local snapshot, and print its metrics",
    )
    train.add_argument("folder")
    train.add_argument("--local", action="store_true", help="on this machine (required: runs train on Vertex AI)")
    train.add_argument("--data", help="a folder of the files the trainer reads (default: what seed_data.py writes)")
    train.add_argument("--keep", help="a folder to keep the model, metrics and logs in (default: a temporary one)")
    train.set_defaults(func=cmd_model_train)
    init = model_sub.add_parser("init", help="make a new model folder from a template, ready to check, push and run")
    init.add_argument("name", help="the model's name: lowercase letters, digits and dashes, starting with a letter")
    init.add_argument(
        "--template", choices=TEMPLATES, default=TEMPLATES[0], help="what kind of model (default %(default)s)"
    )
    init.add_argument("--dir", help="where to make the folder (default: ./NAME)")
    init.set_defaults(func=cmd_model_init)
    data = sub.add_parser("data", help="a model's source data")
    data_sub = data.add_subparsers(dest="action", required=True)
    upload = data_sub.add_parser("upload", help="upload a file or folder to where the model's manifest reads its data")
    upload.add_argument("model")
    upload.add_argument("path")
    upload.set_defaults(func=cmd_data_upload)
    for plugin in _plugins():
        plugin.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `cd4ml status --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Cd4mlError as error:
        print(f"cd4ml: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    except Exception as error:
        from google.api_core.exceptions import GoogleAPIError

        if not isinstance(error, GoogleAPIError):
            raise
        print(f"cd4ml: {reach.explain(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
