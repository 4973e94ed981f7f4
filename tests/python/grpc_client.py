"""A third-party gRPC client of a Seam server, as an app vendor would write one: stubs generated
from `proto/` with grpcio-tools, services listed through `grpc.reflection.v1alpha` and v1, and
one `Generate` call. Prints one JSON object for the Rust test that runs it.

usage: grpc_client.py --proto DIR --addr HOST:PORT [--generate PROMPT]
                      [--ca PEM --cert PEM --key PEM]   (mutual TLS, as a device)
"""

import argparse
import importlib
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

# grpcio-reflection's client speaks v1alpha only, like grpcurl 1.8: what most tools still use.
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc


def generate_stubs(proto_dir: pathlib.Path, out: pathlib.Path) -> None:
    files = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + files) != 0:
        raise SystemExit(f"grpc_tools.protoc failed on {files}")


def list_services(channel: grpc.Channel, version: str) -> list:
    # v1 and v1alpha messages are the same on the wire: the v1alpha types serve for both.
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=v1alpha_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=v1alpha_pb2.ServerReflectionResponse.FromString,
    )
    request = v1alpha_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(call(iter([request]), timeout=10))
    if response.HasField("error_response"):
        raise SystemExit(f"reflection error: {response.error_response}")
    return sorted(s.name for s in response.list_services_response.service)


def describe(channel: grpc.Channel, symbol: str) -> bool:
    """Whether v1alpha reflection returns the file that defines `symbol`."""
    stub = v1alpha_grpc.ServerReflectionStub(channel)
    request = v1alpha_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return len(response.file_descriptor_response.file_descriptor_proto) > 0


def open_channel(args) -> grpc.Channel:
    if args.ca is None:
        return grpc.insecure_channel(args.addr)
    read = lambda path: pathlib.Path(path).read_bytes()  # noqa: E731
    credentials = grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
    return grpc.secure_channel(args.addr, credentials)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto", required=True, type=pathlib.Path)
    parser.add_argument("--addr", required=True)
    parser.add_argument("--generate", metavar="PROMPT")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    proto_dir, prompt = args.proto.resolve(), args.generate
    report = {}
    with open_channel(args) as channel:
        report["v1alpha_services"] = list_services(channel, "v1alpha")
        report["v1_services"] = list_services(channel, "v1")
        report["describes_services"] = all(describe(channel, s) for s in report["v1alpha_services"])
        if prompt is not None:
            with tempfile.TemporaryDirectory() as out:
                generate_stubs(proto_dir, pathlib.Path(out))
                sys.path.insert(0, out)
                edge_pb2 = importlib.import_module("seam.v1.edge_pb2")
                edge_grpc = importlib.import_module("seam.v1.edge_pb2_grpc")
                stub = edge_grpc.AssistantStub(channel)
                request = edge_pb2.GenerateRequest(prompt=prompt, max_tokens=8)
                text, tokens, final = "", 0, None
                for event in stub.Generate(request, timeout=120):
                    kind = event.WhichOneof("event")
                    if kind == "token":
                        text += event.token.text
                        tokens += 1
                    elif kind == "final":
                        final = event.final
                report["text"] = text
                report["tokens"] = tokens
                report["completion_tokens"] = final.completion_tokens if final else None
                try:
                    next(iter(stub.Generate(edge_pb2.GenerateRequest(prompt=""), timeout=30)))
                    report["empty_prompt_status"] = "OK"
                except grpc.RpcError as e:
                    report["empty_prompt_status"] = e.code().name
    print(json.dumps(report))


if __name__ == "__main__":
    main()
