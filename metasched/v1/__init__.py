"""Generated gRPC/protobuf code for the metasched v1 API (scripts/gen-protos). Do not edit."""
