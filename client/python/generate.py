#!/usr/bin/env python3
"""Regenerates the committed gRPC stubs of src/promptlearning/v1/ from proto/.

    generate.py            rewrites src/promptlearning/v1/prompt_learning_pb2{.py,.pyi,_grpc.py}
    generate.py --check    regenerates into a temporary directory and exits 1, printing a diff,
                           when the committed files differ (test/python_client_test.ts runs it)

protoc's Python output imports its siblings absolutely (`from promptlearning.v1 import ...`), so
the package's layout follows the proto package (src/promptlearning/v1/) and needs no rewriting.
The stubs are made by PROTOC_VERSION (Debian 12's protobuf-compiler) with grpc_python_plugin
(protobuf-compiler-grpc); protoc 3.21's Python output needs the protobuf runtime 4.21.12 or later
(Debian's python3-protobuf is 4.21.12), as pyproject.toml declares. Regenerating with another protoc
changes the output: --check then fails saying which version is needed.
"""
import difflib
import os
import shutil
import subprocess
import sys
import tempfile

PROTOC_VERSION = "libprotoc 3.21.12"
HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO = "promptlearning/v1/prompt_learning.proto"
OUTPUTS = ["prompt_learning_pb2.py", "prompt_learning_pb2.pyi", "prompt_learning_pb2_grpc.py"]
PACKAGE_DIR = os.path.join("promptlearning", "v1")


def generate(out: str) -> None:
    """protoc with the Python, .pyi and gRPC plugins: out/promptlearning/v1/*."""
    version = subprocess.run(["protoc", "--version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    if version != PROTOC_VERSION:
        sys.exit(f"generate.py: protoc is {version!r}; the committed stubs are {PROTOC_VERSION}'s "
                 "(Debian 12's protobuf-compiler)")
    plugin = shutil.which("grpc_python_plugin")
    if plugin is None:
        sys.exit("generate.py: grpc_python_plugin is absent "
                 "(apt-get install protobuf-compiler-grpc)")
    subprocess.run(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--pyi_out={out}",
                    f"--grpc_python_out={out}", f"--plugin=protoc-gen-grpc_python={plugin}",
                    os.path.join(PROTO_DIR, PROTO)], check=True)


def main() -> int:
    committed = os.path.join(HERE, "src", PACKAGE_DIR)
    if sys.argv[1:] == ["--check"]:
        with tempfile.TemporaryDirectory(prefix="plstubs") as tmp:
            generate(tmp)
            stale = []
            for name in OUTPUTS:
                with open(os.path.join(tmp, PACKAGE_DIR, name)) as f:
                    fresh = f.read().splitlines(keepends=True)
                path = os.path.join(committed, name)
                old = []
                if os.path.exists(path):
                    with open(path) as f:
                        old = f.read().splitlines(keepends=True)
                if fresh != old:
                    stale.append(name)
                    sys.stdout.writelines(difflib.unified_diff(old, fresh, f"committed/{name}",
                                                               f"generated/{name}", n=1))
        if stale:
            print(f"\nstale: {', '.join(stale)}: run client/python/generate.py and commit them")
            return 1
        print(f"up to date: {', '.join(OUTPUTS)}")
        return 0
    if sys.argv[1:]:
        sys.exit(f"usage: {sys.argv[0]} [--check]")
    with tempfile.TemporaryDirectory(prefix="plstubs") as tmp:
        generate(tmp)
        for name in OUTPUTS:
            shutil.copyfile(os.path.join(tmp, PACKAGE_DIR, name), os.path.join(committed, name))
    print(f"wrote {', '.join(os.path.join('src', PACKAGE_DIR, n) for n in OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
