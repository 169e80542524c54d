"""movierec.v1: generated protobuf and gRPC modules (see ``python -m movierec_common.protogen``)."""
