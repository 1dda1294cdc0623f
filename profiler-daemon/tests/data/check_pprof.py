"""Decodes a gzipped pprof file with Python's protobuf package and the pprof schema, checks
the format's rules, and prints what it found as JSON.

    python check_pprof.py PROFILE.pb.gz PROTO_DIR OUT_DIR
"""
import gzip
import importlib
import json
import sys

from grpc_tools import protoc

profile_path, proto_dir, out_dir = sys.argv[1:4]
if protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", "pprof-profile.proto"]) != 0:
    raise SystemExit("protoc failed")
sys.path.insert(0, out_dir)
pb = importlib.import_module("pprof_profile_pb2")

profile = pb.Profile()
profile.ParseFromString(gzip.open(profile_path).read())
strings = profile.string_table
assert strings[0] == "", "string_table[0] must be empty"


def s(i):
    assert 0 <= i < len(strings), f"string index {i} out of range"
    return strings[i]


types = [(s(t.type), s(t.unit)) for t in profile.sample_type]
mappings = {m.id: m for m in profile.mapping}
functions = {f.id: f for f in profile.function}
locations = {}
for loc in profile.location:
    assert loc.id != 0 and loc.id not in locations, "location ids are unique and nonzero"
    assert loc.mapping_id == 0 or loc.mapping_id in mappings, "mapping exists"
    for line in loc.line:
        assert line.function_id in functions, "function exists"
    locations[loc.id] = loc

totals = [0] * len(types)
stacks = []
for sample in profile.sample:
    assert len(sample.value) == len(types), "one value per sample type"
    for i, v in enumerate(sample.value):
        totals[i] += v
    frames = []
    for lid in sample.location_id:
        loc = locations[lid]
        for line in loc.line:
            f = functions[line.function_id]
            mapping = mappings.get(loc.mapping_id)
            frames.append({
                "function": s(f.name),
                "file": s(f.filename),
                "line": line.line,
                "start_line": f.start_line,
                "mapping": s(mapping.filename) if mapping else "",
                "build_id": s(mapping.build_id) if mapping else "",
            })
    labels = {s(l.key): (s(l.str) if l.str else l.num) for l in sample.label}
    stacks.append({"frames": frames, "values": list(sample.value), "labels": labels})

print(json.dumps({
    "sample_types": types,
    "period_type": [s(profile.period_type.type), s(profile.period_type.unit)],
    "period": profile.period,
    "totals": totals,
    "samples": stacks,
}))
