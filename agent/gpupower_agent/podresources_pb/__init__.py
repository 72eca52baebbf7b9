"""Generated PodResources v1 protobuf and gRPC modules (see generate.sh)."""
