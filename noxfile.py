"""Sessions: tests (the README's test command), e2e (the long flows), unit, standins and contract (tiers of tests),
demo, lint, terraform, bench, chaos. CI runs tests, e2e and terraform.

Every option is declared here once; Debian tools the local stack needs are installed when run as root
(as CI does), otherwise the exact apt-get line is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `nox` script does not add it; tests.terraform needs it

from local_emulator.containers.baseimage import DEBIAN_PACKAGES as _STACK_PACKAGES

nox.options.sessions = ["tests", "e2e", "terraform"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
#: The Debian packages the local stack runs (the delivery stand-ins build and push real OCI images), each with
#: the command that proves it is installed.
DEBIAN_COMMANDS = {package: package for package in _STACK_PACKAGES}
#: The browser the web view's end-to-end tests and the demo's screenshots drive (cd4ml_ui.screenshots).
BROWSER = {"chromium": "chromium"}
GCLOUD_EMULATORS = Path("/usr/lib/google-cloud-sdk/platform")


def _install(session: nox.Session) -> None:
    session.install("-e", ".[local,dev,ui]")


def _debian(session: nox.Session, extra: dict[str, str] | None = None) -> None:
    """Install the Debian tools the local stack needs (and ``extra``: package → command), or say exactly how to."""
    missing = [pkg for pkg, cmd in {**DEBIAN_COMMANDS, **(extra or {})}.items() if shutil.which(cmd) is None]
    if not missing:
        return
    line = "apt-get install -y --no-install-recommends " + " ".join(missing)
    if os.geteuid() != 0:
        session.error(f"the local stack needs Debian packages: run `sudo apt-get update && sudo {line}`")
    session.run("apt-get", "update", "-q", external=True)
    session.run(*line.split(), external=True, env={"DEBIAN_FRONTEND": "noninteractive"})


def _emulators(session: nox.Session) -> None:
    for path in ("pubsub-emulator", "cloud-firestore-emulator"):
        if not (GCLOUD_EMULATORS / path).exists():
            session.error(
                f"{GCLOUD_EMULATORS / path} is missing: install the gcloud CLI with "
                "`apt-get install google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator`"
            )


@nox.session
def tests(session: nox.Session) -> None:
    """The README's test command: unit, stand-in and contract tests, and the end-to-end tests on the local stack
    but the long flows (``-m flow``: ``nox -s e2e``); pytest arguments pass through."""
    _debian(session)
    _emulators(session)
    _install(session)
    session.run("pytest", *(session.posargs or ["tests", "--ignore=tests/terraform", "-m", "not flow"]))


@nox.session
def e2e(session: nox.Session) -> None:
    """The long end-to-end flows (``@pytest.mark.flow``): down/up ×3, each model template from init to promotion,
    the caches and the same data fetched three times, a regression gate, the web view in Chromium, Gate outages and
    deadlines; pytest arguments pass through."""
    _debian(session, BROWSER)
    _emulators(session)
    _install(session)
    session.run("pytest", *(session.posargs or ["tests/e2e", "-m", "flow"]))


@nox.session
def unit(session: nox.Session) -> None:
    """The fast tier: every stage handler on the in-memory ledger, the ledger rules; no process spawned, < 60 s."""
    _install(session)
    session.run("pytest", "tests/unit", "-q", *session.posargs)


@nox.session
def standins(session: nox.Session) -> None:
    """The stand-ins' own tests (Vertex, Cloud Build, registry, Gate, IAM, supervisor), with the tools they run."""
    _debian(session)
    _install(session)
    session.run("pytest", "tests/standins", "-q", *session.posargs)


@nox.session
def contract(session: nox.Session) -> None:
    """Each handler through functions-framework against the emulators and stand-ins (no push chain), ~1.5 min."""
    _debian(session)
    _emulators(session)
    _install(session)
    session.run("pytest", "tests/contract", "-q", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Start the local stack, run the example model live with its timeline, take screenshots of the web view
    (.cd4ml/screenshots/), stop the stack."""
    _debian(session, BROWSER)
    _emulators(session)
    _install(session)
    env = {"CD4ML_STATE_DIR": str(ROOT / ".cd4ml")}
    session.run("cd4ml", "local", "up", env=env)
    try:
        session.run("cd4ml", "run", "digits", "--wait", "--timeout", "300", env=env)
        session.run("cd4ml", "status", env=env)
        ui = json.loads((ROOT / ".cd4ml" / "stack.json").read_text())["endpoints"]["ui"]
        session.run("python", "-m", "cd4ml_ui.screenshots", ui, str(ROOT / ".cd4ml" / "screenshots"), env=env)
    finally:
        session.run("cd4ml", "local", "down", env=env)


#: What lint checks: every Python file of the project.
LINTED = ("functions", "cd4ml_cli", "cd4ml_models", "cd4ml_ui", "local_emulator", "tests", "benchmarks", "noxfile.py")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format --check, ruff check and mypy (strict) on every Python package of the project."""
    _install(session)
    session.run("ruff", "format", "--check", *LINTED)
    session.run("ruff", "check", *LINTED)
    session.run("mypy", "functions", "cd4ml_cli", "cd4ml_models", "cd4ml_ui", "local_emulator", "tests", "benchmarks")


@nox.session
def bench(session: nox.Session) -> None:
    """Measure the targets in docs/architecture.md on a private local stack (~5 min); fails when one is missed."""
    _debian(session)
    _emulators(session)
    _install(session)
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """Runs under crashes, triple delivery, outages and bad inputs on a private local stack; fails on a loss,
    a duplicate effect or an unhandled fault; writes benchmarks/results/chaos.json, prints a table and ends with
    the `chaos: R runs, …` line (not in the default sessions: ~25 min, see README)."""
    _debian(session)
    _emulators(session)
    _install(session)
    session.run("python", "-m", "benchmarks.chaos", *session.posargs)


@nox.session
def terraform(session: nox.Session) -> None:
    """Check terraform/ offline: fmt, terraform validate + plan (stand-in providers), checkov, parity and IAM tests."""
    from tests.terraform.session import terraform as check

    check(session)
