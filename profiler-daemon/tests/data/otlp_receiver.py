"""A profiles receiver for the export tests, independent of the daemon's code.

It serves OTLP's ProfilesService/Export with grpcio and the official generated classes of the
opentelemetry-proto package, and appends one JSON line per received profile to --out: the
resource's attributes, the sample type, the window, and the samples folded into
`root;...;leaf` stacks with their summed values.

With --http it serves HTTP instead: OTLP/HTTP (POST /v1development/profiles, the same
classes) and Grafana Pyroscope's push API (POST /push.v1.PusherService/Push), whose series
it decodes with classes generated from tests/data/pyroscope-push.proto and whose pprof
profiles it decodes with the pprof schema (tests/data/pprof-profile.proto).

    otlp_receiver.py --out FILE [--port N] [--http] [--fail CODE] [--require-header KEY=VALUE]
                     [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

Prints `listening PORT` once it serves. With --fail, every call fails with that gRPC status
code name (for example UNAUTHENTICATED), or that HTTP status with --http. With
--require-header, calls without that header fail as unauthenticated. With --tls-cert and
--tls-key the gRPC server speaks TLS, and with --tls-client-ca it requires a client
certificate from that CA.
"""

import argparse
import gzip
import http.server
import importlib
import json
import os
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2,
    profiles_service_pb2_grpc,
)


def any_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def folded(dictionary, profile):
    strings = dictionary.string_table
    stacks = {}
    for sample in profile.samples:
        names = []
        locations = dictionary.stack_table[sample.stack_index].location_indices
        for index in reversed(locations):  # leaf first on the wire; root first here
            location = dictionary.location_table[index]
            frame_type = ""
            for a in location.attribute_indices:
                attr = dictionary.attribute_table[a]
                if strings[attr.key_strindex] == "profile.frame.type":
                    frame_type = any_value(attr.value)
            for line in location.lines:
                function = dictionary.function_table[line.function_index]
                name = strings[function.name_strindex]
                if frame_type == "cpython":
                    file = strings[function.filename_strindex]
                    name = f"{name} ({file}:{line.line})" if line.line else f"{name} ({file})"
                names.append(name.replace(";", ":"))
        attrs = {}
        for a in sample.attribute_indices:
            attr = dictionary.attribute_table[a]
            attrs[strings[attr.key_strindex]] = any_value(attr.value)
        key = ";".join(names)
        stacks[key] = stacks.get(key, 0) + sum(sample.values)
    return stacks


class Receiver(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self, out, fail, header):
        self.out = out
        self.fail = fail
        self.header = header
        self.lock = threading.Lock()

    def Export(self, request, context):
        if self.fail:
            context.abort(getattr(grpc.StatusCode, self.fail), "the test receiver refuses")
        if self.header:
            key, value = self.header.split("=", 1)
            if dict(context.invocation_metadata()).get(key) != value:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing credentials")
        record(self.out, self.lock, otlp_lines(request))
        return profiles_service_pb2.ExportProfilesServiceResponse()


def record(out, lock, lines):
    with lock, open(out, "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def otlp_lines(request):
    dictionary = request.dictionary
    strings = dictionary.string_table
    lines = []
    for rp in request.resource_profiles:
        resource = {kv.key: any_value(kv.value) for kv in rp.resource.attributes}
        for sp in rp.scope_profiles:
            for profile in sp.profiles:
                lines.append(
                    {
                        "resource": resource,
                        "scope": sp.scope.name,
                        "type": strings[profile.sample_type.type_strindex],
                        "unit": strings[profile.sample_type.unit_strindex],
                        "period": profile.period,
                        "start": profile.time_unix_nano,
                        "duration": profile.duration_nano,
                        "profile_id": profile.profile_id.hex(),
                        "stacks": folded(dictionary, profile),
                    }
                )
    return lines


def generated(proto):
    """The Python module protoc generates from tests/data/PROTO."""
    from grpc_tools import protoc

    data = os.path.dirname(os.path.abspath(__file__))
    out = tempfile.mkdtemp()
    if protoc.main(["protoc", f"-I{data}", f"--python_out={out}", proto]) != 0:
        raise SystemExit(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    return importlib.import_module(proto.replace("-", "_").replace(".proto", "_pb2"))


def pyroscope_lines(body, push_pb, pprof_pb):
    request = push_pb.PushRequest()
    request.ParseFromString(body)
    lines = []
    for series in request.series:
        labels = {l.name: l.value for l in series.labels}
        for sample in series.samples:
            profile = pprof_pb.Profile()
            profile.ParseFromString(gzip.decompress(sample.raw_profile))
            strings = profile.string_table
            functions = {f.id: strings[f.name] for f in profile.function}
            locations = {l.id: [functions[line.function_id] for line in l.line] for l in profile.location}
            stacks = {}
            for s in profile.sample:
                names = [n for loc in reversed(s.location_id) for n in reversed(locations[loc])]
                key = ";".join(n.replace(";", ":") for n in names)
                values = stacks.setdefault(key, [0] * len(s.value))
                for i, v in enumerate(s.value):
                    values[i] += v
                for label in s.label:
                    assert strings[label.key] in ("reason", "gil"), strings[label.key]
            lines.append(
                {
                    "labels": labels,
                    "id": sample.ID,
                    "types": [[strings[t.type], strings[t.unit]] for t in profile.sample_type],
                    "start": profile.time_nanos,
                    "duration": profile.duration_nanos,
                    "period": profile.period,
                    "stacks": stacks,
                }
            )
    return lines


def serve_http(args):
    from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

    push_pb = generated("pyroscope-push.proto")
    pprof_pb = generated("pprof-profile.proto")
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if args.fail:
                return self.answer(int(args.fail), b"the test receiver refuses")
            if args.require_header:
                key, value = args.require_header.split("=", 1)
                if self.headers.get(key) != value:
                    return self.answer(401, b"missing credentials")
            if self.path == "/v1development/profiles":
                assert self.headers["Content-Type"] == "application/x-protobuf"
                request = svc.ExportProfilesServiceRequest()
                request.ParseFromString(body)
                record(args.out, lock, otlp_lines(request))
                return self.answer(200, svc.ExportProfilesServiceResponse().SerializeToString())
            if self.path == "/push.v1.PusherService/Push":
                assert self.headers["Content-Type"] == "application/proto"
                assert self.headers["Connect-Protocol-Version"] == "1"
                record(args.out, lock, pyroscope_lines(body, push_pb, pprof_pb))
                return self.answer(200, b"")
            return self.answer(404, b"no such path")

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail")
    parser.add_argument("--require-header")
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    args = parser.parse_args()
    if args.http:
        return serve_http(args)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(
        Receiver(args.out, args.fail, args.require_header), server
    )
    if args.tls_cert:
        read = lambda path: open(path, "rb").read()
        credentials = grpc.ssl_server_credentials(
            [(read(args.tls_key), read(args.tls_cert))],
            root_certificates=read(args.tls_client_ca) if args.tls_client_ca else None,
            require_client_auth=bool(args.tls_client_ca),
        )
        port = server.add_secure_port(f"127.0.0.1:{args.port}", credentials)
    else:
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
