"""A gRPC proxy in front of the Pub/Sub emulator for one identity: raw bytes forwarded, Publish authorized.

Publish needs ``pubsub.topics.publish`` on the topic (roles/pubsub.publisher, granted per topic by Terraform);
without it Pub/Sub answers PERMISSION_DENIED "User not authorized to perform this action." (the text every client
reports, e.g. googleapis/nodejs-pubsub#1180, GoogleCloudPlatform/spring-cloud-gcp#2769). A function identity holds
no other Pub/Sub permission in iam_bindings.yaml, so every other call from it is refused the same way; the admin
identity passes everything. Every Publish, whoever sends it, is held to Pub/Sub's limits (``limits``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.pubsub_v1.types import PublishRequest

from local_emulator.iam.policy import ADMIN, Policy
from local_emulator.pubsub import limits as _pubsub_limits

PUBLISH = "/google.pubsub.v1.Publisher/Publish"
STREAMING = {"/google.pubsub.v1.Subscriber/StreamingPull"}
NOT_AUTHORIZED = "User not authorized to perform this action."
#: gRPC's default 4 MB would refuse a legal 10 MB publish before the proxy could judge it.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
_TOPIC = re.compile(r"^projects/(?P<project>[^/]+)/topics/(?P<topic>[^/]+)$")
_PUBLISH_PB: Any = PublishRequest.pb()


def publish_refusal(policy: Policy, identity: str, request_bytes: bytes) -> tuple[grpc.StatusCode, str] | None:
    """The status Pub/Sub would answer to this PublishRequest from ``identity``, or None to let it through."""
    request = _PUBLISH_PB.FromString(request_bytes)
    match = _TOPIC.match(request.topic)
    if identity != ADMIN and (
        match is None
        or match["project"] != policy.project
        or not policy.allows_topic(identity, "pubsub.topics.publish", match["topic"])
    ):
        return grpc.StatusCode.PERMISSION_DENIED, NOT_AUTHORIZED
    problem = _pubsub_limits.publish_problem(request, len(request_bytes))
    if problem is not None:
        return grpc.StatusCode.INVALID_ARGUMENT, problem
    return None


class PubSubProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Forwards every RPC of the Pub/Sub API to ``upstream`` as bytes, after asking the policy."""

    def __init__(self, upstream: str, identity: str, policy: Policy) -> None:
        self._channel = grpc.insecure_channel(upstream, options=CHANNEL_OPTIONS)
        self._identity = identity
        self._policy = policy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method in STREAMING:
            return grpc.stream_stream_rpc_method_handler(self._streaming(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    def _unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        forward = self._channel.unary_unary(method)

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            refusal = self._refusal(method, request)
            if refusal is not None:
                context.abort(*refusal)
            try:
                response: bytes = forward(request, timeout=context.time_remaining(), metadata=_metadata(context))
            except grpc.RpcError as error:
                context.abort(error.code(), error.details() or "")
            return response

        return handle

    def _streaming(self, method: str) -> Callable[[Iterator[bytes], grpc.ServicerContext], Iterator[bytes]]:
        forward = self._channel.stream_stream(method)

        def handle(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            if self._identity != ADMIN:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_AUTHORIZED)
            call = forward(requests, timeout=context.time_remaining(), metadata=_metadata(context))
            context.add_callback(call.cancel)
            try:
                yield from call
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    context.abort(error.code(), error.details() or "")

        return handle

    def _refusal(self, method: str, request: bytes) -> tuple[grpc.StatusCode, str] | None:
        if method == PUBLISH:
            return publish_refusal(self._policy, self._identity, request)
        if self._identity != ADMIN:
            return grpc.StatusCode.PERMISSION_DENIED, NOT_AUTHORIZED
        return None


def _metadata(context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
    return [(k, v) for k, v in context.invocation_metadata() if not k.startswith(":") and k != "user-agent"]
