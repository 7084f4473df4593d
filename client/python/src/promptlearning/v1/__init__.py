"""promptlearning.v1: the stubs protoc and grpc_python_plugin generate from
proto/promptlearning/v1/prompt_learning.proto (client/python/generate.py; do not edit them)."""
