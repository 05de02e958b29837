"""``cd4ml ui``: serve the read-only web view of the run ledger (the deployment's Firestore, or the local stack's).

Added to the ``cd4ml`` command as a built-in plugin (cd4ml_cli.main); ``python -m cd4ml_ui`` is the same command,
which the local stack starts. Production serves ``wsgi()`` with gunicorn on Cloud Run (cd4ml_ui/Dockerfile).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

DEFAULT_PORT = 8780


def register(sub: Any) -> None:
    """Add ``ui`` to the ``cd4ml`` command's subparsers."""
    ui = sub.add_parser("ui", help="serve the read-only web view of runs and models (http://127.0.0.1:8780/)")
    _arguments(ui)
    ui.set_defaults(func=command)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--poll-seconds", type=float, default=3.0, help="how often open pages refresh (default 3)")


def app_from_environment(poll_seconds: float = 3.0) -> Flask:
    """The web view over the Firestore that CD4ML_PROJECT / CD4ML_FIRESTORE_DATABASE name (or the local stack's)."""
    from cd4ml_cli.main import _settings

    from cd4ml import clients
    from cd4ml_ui.app import create_app
    from cd4ml_ui.queries import FirestoreLedger

    return create_app(FirestoreLedger(clients.firestore_client(_settings())), poll_seconds=poll_seconds)


def wsgi() -> Flask:
    """The WSGI application gunicorn serves in production (``gunicorn 'cd4ml_ui.cli:wsgi()'``)."""
    return app_from_environment()


def command(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    app = app_from_environment(args.poll_seconds)
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as error:
        print(
            f"cd4ml: cannot listen on {args.host}:{args.port}: {error.strerror}; pick another with --port",
            file=sys.stderr,
        )
        return 2
    print(
        f"cd4ml ui: http://{args.host}:{server.server_port}/ (read-only; Ctrl-C stops it)", file=sys.stderr, flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cd4ml_ui``: the same as ``cd4ml ui``."""
    from cd4ml.errors import Cd4mlError

    parser = argparse.ArgumentParser(prog="cd4ml ui", description=__doc__)
    _arguments(parser)
    try:
        return command(parser.parse_args(argv))
    except Cd4mlError as error:
        print(f"cd4ml: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
