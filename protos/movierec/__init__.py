"""The movierec gRPC contract. Generated code lives in :mod:`movierec.v1`."""
