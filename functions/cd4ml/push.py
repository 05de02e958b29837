"""The HTTP edge of a push delivery: the body Pub/Sub posts, read whole, and a 4xx naming what a request is not.

Production (terraform/pubsub.tf) has Pub/Sub push each message to ``FUNCTION_URL/projects/P/topics/T`` with the
documented body ``{"message": {"data", "attributes", "messageId", "message_id", "publishTime", "publish_time"},
"subscription": "projects/P/subscriptions/S", "deliveryAttempt": N}`` (``deliveryAttempt`` because every stage
subscription has a dead-letter policy; https://cloud.google.com/pubsub/docs/push#receive_push,
https://cloud.google.com/pubsub/docs/handling-failures). functions-framework 3.10 turns that body into the
CloudEvent a ``@cloud_event`` handler gets, keeping only ``message.{data, attributes, messageId, publishTime}``
(``event_conversion.marshal_background_event_data``): the subscription and the delivery attempt are dropped. The
handler still runs inside the request Pub/Sub sent (Flask's request context), so :func:`envelope` reads them there.

Requests that are no push body never reach a handler: functions-framework answers them itself, with a 400 naming
nothing ("The browser (or proxy) sent a request that this server could not understand"), a 400 echoing every
header (the caller's ``Authorization`` included), or a 500 for a JSON array or string. :func:`install` hooks its
error handlers so each gets a 400 whose one line names the problem and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import flask
from werkzeug.exceptions import BadRequest, HTTPException

from cd4ml import logs
from cd4ml.errors import DeadLetterRefused
from cd4ml.events import PubSubMessage
from cd4ml.limits import MAX_ATTRIBUTES, MAX_KEY_BYTES, MAX_REQUEST_BYTES, MAX_VALUE_BYTES, attribute_bytes, bounded

EXPECTED = (
    'expected a Pub/Sub push body: {"message": {"data": BASE64, "attributes": {...}, "messageId": ID, '
    '"publishTime": RFC3339}, "subscription": "projects/P/subscriptions/S"}'
)
LIMITS = "https://cloud.google.com/pubsub/quotas#resource_limits"
#: Bytes of an answer's one line.
ANSWER_BYTES = 1024


class Refused(HTTPException):
    """A request answered with a 4xx naming why (``description``); Pub/Sub treats any 4xx as a failed push.
    ``logged`` when the stage already logged the problem (its rejection), so the answer is not logged twice."""

    def __init__(self, code: int, reason: str, *, logged: bool = False) -> None:
        super().__init__(description=reason)
        self.code = code
        self.logged = logged


def envelope() -> Mapping[str, Any] | None:
    """The push body of the request being handled, as Pub/Sub sent it; None outside a request or for another body."""
    if not flask.has_request_context():
        return None
    body = flask.request.get_json(silent=True)
    return body if isinstance(body, Mapping) and isinstance(body.get("message"), Mapping) else None


def message(data: Any) -> PubSubMessage:
    """The message pushed: from the request's own body (subscription and delivery attempt included) when there is
    one, else from the CloudEvent's data (``data``); InvalidEvent when neither is a push body."""
    return PubSubMessage.from_push(envelope() or data)


def limit_problem(pushed: PubSubMessage) -> str | None:
    """Why no Pub/Sub message can be what was pushed (over Pub/Sub's limits), or None: such a body came from
    something else posting to the function."""
    size = len(pushed.data) + attribute_bytes(pushed.attributes)
    if size > MAX_REQUEST_BYTES:
        return (
            f"the message's data and attributes are {size} bytes, over Pub/Sub's limit of {MAX_REQUEST_BYTES} "
            f"bytes ({LIMITS}): no Pub/Sub push carries it"
        )
    if len(pushed.attributes) > MAX_ATTRIBUTES:
        return (
            f"the message has {len(pushed.attributes)} attributes, over Pub/Sub's limit of {MAX_ATTRIBUTES} ({LIMITS})"
        )
    for key, value in pushed.attributes.items():
        if len(key.encode()) > MAX_KEY_BYTES:
            return f"an attribute key is {len(key.encode())} bytes, over Pub/Sub's limit of {MAX_KEY_BYTES} ({LIMITS})"
        if len(value.encode()) > MAX_VALUE_BYTES:
            return (
                f"attribute {bounded(key, 64)!r} is {len(value.encode())} bytes, over Pub/Sub's limit of "
                f"{MAX_VALUE_BYTES} ({LIMITS})"
            )
    return None


def body_problem(body: bytes) -> str | None:
    """Why ``body`` is not a push body functions-framework can turn into a Pub/Sub CloudEvent, or None."""
    if not body.strip():
        return f"the request body is empty: {EXPECTED}"
    try:
        parsed = json.loads(body)
    except UnicodeDecodeError as error:
        return f"the request body is not JSON text (no UTF-8/16/32 decoding: {error.reason} at byte {error.start})"
    except json.JSONDecodeError as error:
        return (
            f"the request body is not JSON: {error.msg} at line {error.lineno} column {error.colno} "
            f"(byte {error.pos} of {len(body)}): {EXPECTED}"
        )
    if not isinstance(parsed, dict):
        return f"the request body is a JSON {_kind(parsed)}, not an object: {EXPECTED}"
    inner = parsed.get("message")
    problems = []
    if not isinstance(inner, dict):
        problems.append("no 'message' object" if inner is None else f"'message' is a JSON {_kind(inner)}")
    else:
        problems += [f"no 'message.{key}'" for key in ("data", "messageId") if key not in inner]
    if "subscription" not in parsed:
        problems.append("no 'subscription'")
    if problems:
        return f"the request body is not a Pub/Sub push body ({', '.join(problems)}): {EXPECTED}"
    return None


def install(errorhandler: Callable[[Any], Callable[[Any], Any]]) -> None:
    """Register the edge's answers with functions-framework (its ``errorhandler``, the Flask app's)."""
    errorhandler(BadRequest)(_refuse_unreadable)
    errorhandler(TypeError)(_refuse_unconvertible)
    errorhandler(UnicodeDecodeError)(_refuse_unreadable)
    errorhandler(Refused)(_answer)
    errorhandler(DeadLetterRefused)(_refuse_undeliverable)


def _answer(error: Refused) -> tuple[str, int, dict[str, str]]:
    """The refusal's one line, logged once (nothing reached a stage, or the stage already logged and dead-lettered)."""
    reason = bounded(str(error.description), ANSWER_BYTES)
    if not error.logged:
        logs.configure()
        logs.get("http").error(reason, extra={"details": {"status": error.code, "path": flask.request.path[:200]}})
    return reason, int(error.code or 400), {"Content-Type": "text/plain; charset=utf-8"}


def _refuse_undeliverable(error: DeadLetterRefused) -> tuple[str, int, dict[str, str]]:
    """A message whose dead-letter copy Pub/Sub refused: 400 with Pub/Sub's words (Pub/Sub, if it pushed it,
    retries it and dead-letters the original itself once its attempts are spent)."""
    return _answer(Refused(400, str(error)))


def _refuse_unreadable(error: Exception) -> tuple[str, int, dict[str, str]]:
    """400 naming what is wrong with the body (functions-framework's own 400 names nothing, or echoes the headers)."""
    reason = body_problem(flask.request.get_data()) or (
        f"the request is neither a CloudEvent nor a Pub/Sub push body ({type(error).__name__}): {EXPECTED}"
    )
    return _answer(Refused(400, reason))


def _refuse_unconvertible(error: TypeError) -> tuple[str, int, dict[str, str]]:
    """functions-framework's conversion raises TypeError for a JSON array or string body (a crash, 500): 400
    naming it. A TypeError with a readable push body is a stage's own: raised again, a 500, so Pub/Sub retries."""
    reason = body_problem(flask.request.get_data())
    if reason is None:
        raise error
    return _answer(Refused(400, reason))


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")
