"""A stand-in Terraform provider: serves a real provider's schema over Terraform's plugin protocol 6 and plans
without any cloud, so `terraform validate` and `terraform plan` run Terraform's own evaluator offline.

Terraform starts it as a plugin (hashicorp/go-plugin): with ``TF_PLUGIN_MAGIC_COOKIE`` in its environment it
listens on 127.0.0.1, prints ``CORE|APP|tcp|ADDRESS|grpc`` (go-plugin's handshake line; protocol 6) and serves
gRPC in plaintext, which Terraform accepts when ``TF_DISABLE_PLUGIN_TLS=1`` is set (``plan.py`` sets it).
``plugin.GRPCController/Shutdown`` ends it at once, as go-plugin asks.

What it answers: GetProviderSchema (the schema ``schema.load`` reads from the provider's cdktn bindings),
Validate*Config (a value on a read-only attribute is refused, as the SDK does), ConfigureProvider,
PlanResourceChange (the proposed state with every computed attribute still null made unknown), ReadDataSource
(known placeholders ``stand-in:TYPE.ATTRIBUTE`` for computed attributes), ReadResource and
UpgradeResourceState (state passed through). ApplyResourceChange is refused: this provider only plans.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from . import schema, values

#: The value go-plugin's client puts in TF_PLUGIN_MAGIC_COOKIE (hashicorp/terraform internal/plugin6/serve.go).
MAGIC_COOKIE = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2"
PROTO = Path(__file__).with_name("tfplugin6.proto")


def protocol() -> tuple[Any, Any]:
    """The message and service modules of tfplugin6.proto, compiled in memory by grpcio-tools."""
    sys.path.insert(0, str(PROTO.parent))
    try:
        modules: tuple[Any, Any] = grpc.protos_and_services(PROTO.name)
    finally:
        sys.path.remove(str(PROTO.parent))
    return modules


def _schema_message(pb: Any, block: Mapping[str, Any]) -> Any:
    return pb.Schema(version=0, block=_block_message(pb, block))


def _block_message(pb: Any, block: Mapping[str, Any]) -> Any:
    nesting = {"single": 1, "list": 2, "set": 3, "map": 4}
    return pb.Schema.Block(
        attributes=[
            pb.Schema.Attribute(
                name=name,
                type=json.dumps(spec["type"]).encode(),
                required=bool(spec.get("required")),
                optional=bool(spec.get("optional")),
                computed=bool(spec.get("computed")),
            )
            for name, spec in sorted(block.get("attributes", {}).items())
        ],
        block_types=[
            pb.Schema.NestedBlock(
                type_name=name,
                block=_block_message(pb, nested["block"]),
                nesting=nesting[nested["nesting_mode"]],
                min_items=nested.get("min_items", 0),
                max_items=nested.get("max_items", 0),
            )
            for name, nested in sorted(block.get("block_types", {}).items())
        ],
    )


def schema_response(pb: Any, name: str) -> bytes:
    """The serialized GetProviderSchema answer of provider ``name``, built once and cached beside its schema
    (building it from the JSON takes seconds for google's ~1,400 resources; Terraform starts a provider
    several times per command)."""
    target = schema.cache_path(name).with_suffix(".pb")
    if not target.exists():
        loaded = schema.load(name)
        response = pb.GetProviderSchema.Response(
            provider=_schema_message(pb, loaded["provider"]),
            resource_schemas={t: _schema_message(pb, b) for t, b in loaded["resource"].items()},
            data_source_schemas={t: _schema_message(pb, b) for t, b in loaded["data"].items()},
            server_capabilities=pb.ServerCapabilities(plan_destroy=False, get_provider_schema_optional=True),
        )
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(response.SerializeToString())
        tmp.replace(target)
    return target.read_bytes()


class StandIn:
    """The Provider service of one provider (google, google-beta or archive); methods are named as the RPCs."""

    def __init__(self, pb: Any, name: str) -> None:
        self._pb = pb
        self._name = name
        self._response = schema_response(pb, name)

    @functools.cached_property
    def _schema(self) -> Mapping[str, Any]:
        """The schema as JSON, loaded on the first call that needs it (Terraform starts many instances that only
        answer GetProviderSchema)."""
        return schema.load(self._name)

    @property
    def _cut(self) -> Mapping[str, list[str]]:
        cut: Mapping[str, list[str]] = self._schema.get("cut", {})
        return cut

    # -- schema ------------------------------------------------------------------------------------------

    def GetMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        pb = self._pb
        return pb.GetMetadata.Response(
            server_capabilities=pb.ServerCapabilities(get_provider_schema_optional=True),
            resources=[pb.GetMetadata.ResourceMetadata(type_name=t) for t in self._schema["resource"]],
            data_sources=[pb.GetMetadata.DataSourceMetadata(type_name=t) for t in self._schema["data"]],
        )

    def GetProviderSchema(self, request: Any, context: grpc.ServicerContext) -> bytes:
        return self._response  # already serialized: see handlers()

    def GetFunctions(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._pb.GetFunctions.Response()

    # -- validation -------------------------------------------------------------------------------------

    def ValidateProviderConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._pb.ValidateProviderConfig.Response()

    def ValidateResourceConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = self._diagnostics("resource", request.type_name, request.config)
        return self._pb.ValidateResourceConfig.Response(diagnostics=found)

    def ValidateDataResourceConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        found = self._diagnostics("data", request.type_name, request.config)
        return self._pb.ValidateDataResourceConfig.Response(diagnostics=found)

    def _diagnostics(self, kind: str, type_name: str, config: Any) -> list[Any]:
        pb = self._pb
        block = self._schema[kind][type_name]
        found = [
            pb.Diagnostic(
                severity=pb.Diagnostic.ERROR,
                summary="Invalid or unknown key" if len(path) > 1 else "Value for unconfigurable attribute",
                detail=f"{'.'.join(str(p) for p in path)}: this field cannot be set (the provider computes it)",
                attribute=pb.AttributePath(
                    steps=[pb.AttributePath.Step(attribute_name=str(p)) for p in path if isinstance(p, str)][:1]
                ),
            )
            for path in values.read_only_set(block, _value(config))
        ]
        cut = self._cut.get(f"{kind} {type_name}")
        if cut:
            found.append(
                pb.Diagnostic(
                    severity=pb.Diagnostic.WARNING,
                    summary=f"{self._name} stand-in: the schema of {type_name} is incomplete",
                    detail="cdktn's bindings stop a self-similar nesting; left out: " + ", ".join(cut),
                )
            )
        return found

    # -- lifecycle --------------------------------------------------------------------------------------

    def ConfigureProvider(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._pb.ConfigureProvider.Response()

    def UpgradeResourceState(self, request: Any, context: grpc.ServicerContext) -> Any:
        raw = request.raw_state.json or b"null"
        return self._pb.UpgradeResourceState.Response(upgraded_state=self._pb.DynamicValue(json=raw))

    def ReadResource(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._pb.ReadResource.Response(new_state=request.current_state, private=request.private)

    def PlanResourceChange(self, request: Any, context: grpc.ServicerContext) -> Any:
        block = self._schema["resource"][request.type_name]
        planned = values.plan(block, _value(request.proposed_new_state))
        return self._pb.PlanResourceChange.Response(
            planned_state=self._pb.DynamicValue(msgpack=values.encode(planned)), planned_private=request.prior_private
        )

    def ApplyResourceChange(self, request: Any, context: grpc.ServicerContext) -> Any:
        pb = self._pb
        refused = pb.Diagnostic(
            severity=pb.Diagnostic.ERROR,
            summary=f"{self._name} stand-in provider only plans",
            detail="This provider serves the real schema offline for `terraform plan`; it cannot apply anything.",
        )
        return pb.ApplyResourceChange.Response(diagnostics=[refused])

    def ReadDataSource(self, request: Any, context: grpc.ServicerContext) -> Any:
        block = self._schema["data"][request.type_name]
        state = values.read(block, _value(request.config), f"{request.type_name}")
        return self._pb.ReadDataSource.Response(state=self._pb.DynamicValue(msgpack=values.encode(state)))

    def StopProvider(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._pb.StopProvider.Response()


#: The RPCs of tfplugin6.Provider this stand-in answers; Terraform handles "unimplemented" for the others.
METHODS = (
    "GetMetadata",
    "GetProviderSchema",
    "GetFunctions",
    "ValidateProviderConfig",
    "ValidateResourceConfig",
    "ValidateDataResourceConfig",
    "ConfigureProvider",
    "UpgradeResourceState",
    "ReadResource",
    "PlanResourceChange",
    "ApplyResourceChange",
    "ReadDataSource",
    "StopProvider",
)


def handlers(pb: Any, provider: StandIn) -> grpc.GenericRpcHandler:
    """The gRPC handlers of ``provider`` (GetProviderSchema's answer goes out as the cached bytes it is)."""

    def serialize(message: Any) -> bytes:
        return message if isinstance(message, bytes) else bytes(message.SerializeToString())

    return grpc.method_handlers_generic_handler(
        "tfplugin6.Provider",
        {
            method: grpc.unary_unary_rpc_method_handler(
                getattr(provider, method),
                request_deserializer=getattr(pb, method).Request.FromString,
                response_serializer=serialize,
            )
            for method in METHODS
        },
    )


def _value(dynamic: Any) -> Any:
    if dynamic.msgpack:
        return values.decode(dynamic.msgpack)
    if dynamic.json:
        return json.loads(dynamic.json)
    return None


def _controller(stop: Callable[[], None]) -> grpc.GenericRpcHandler:
    """go-plugin's GRPCController: Shutdown (an empty message both ways) stops the server."""

    def shutdown(request: bytes, context: grpc.ServicerContext) -> bytes:
        threading.Thread(target=stop, daemon=True).start()
        return b""

    handler = grpc.unary_unary_rpc_method_handler(
        shutdown, request_deserializer=lambda b: b, response_serializer=lambda b: b
    )
    return grpc.method_handlers_generic_handler("plugin.GRPCController", {"Shutdown": handler})


def serve(name: str, argv: Iterable[str] = ()) -> int:
    """Run the stand-in of provider ``name`` as Terraform's plugin: handshake on stdout, serve until Shutdown."""
    if os.environ.get("TF_PLUGIN_MAGIC_COOKIE") != MAGIC_COOKIE:
        print(
            f"terraform-provider-{name} (cd4ml stand-in) is a Terraform plugin: Terraform starts it; "
            "see tests/terraform/provider/plan.py",
            file=sys.stderr,
        )
        return 1
    pb, _services = protocol()
    provider = StandIn(pb, name)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    done = threading.Event()

    def stop() -> None:
        server.stop(grace=None).wait()
        done.set()

    server.add_generic_rpc_handlers((handlers(pb, provider), _controller(stop)))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"1|6|tcp|127.0.0.1:{port}|grpc", flush=True)
    done.wait()
    return 0
