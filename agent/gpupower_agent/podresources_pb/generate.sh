#!/bin/sh
# Regenerate the PodResources v1 Python modules from api.proto (needs grpcio-tools).
set -eu
cd "$(dirname "$0")/../.."
python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. gpupower_agent/podresources_pb/api.proto
