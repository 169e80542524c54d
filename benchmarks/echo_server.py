"""The echo baseline: our server with the recommending taken out.

Built exactly like ``movierec-recommender`` (``movierec_common.grpc_server.
build_server``, the same thread count, options, concurrency limit, health and
reflection) and answering the same ``Recommender.Recommend`` request type with
a constant 10-item ``RecommendResponse``. What it sustains is what Python gRPC
itself costs on this machine, so "our throughput as a share of the echo's"
says how much our own code adds, and holds from machine to machine where
absolute calls/s do not.
"""

from __future__ import annotations

import argparse

from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from movierec_common.graceful_stop import wait_for_termination
from movierec_common.grpc_server import build_server

SERVICE_NAME = "movierec.v1.Recommender"


def constant_response() -> recommender_pb2.RecommendResponse:
    """Ten items with realistic titles, so the response is about as large as ours."""
    return recommender_pb2.RecommendResponse(
        items=[
            recommender_pb2.RecommendedItem(movie_id=100 + i, title=f"Some Movie Title Number {i} (1995)",
                                            score=1.0 - i / 10)
            for i in range(10)
        ],
        model_version=1,
    )


class EchoRecommender(recommender_pb2_grpc.RecommenderServicer):
    def __init__(self):
        self._response = constant_response()

    def Recommend(self, request, context):
        return self._response


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--threads", type=int, default=8, help="same meaning as movierec-recommender --threads")
    args = parser.parse_args(argv)
    servicer = EchoRecommender()
    handle = build_server(
        f"{args.host}:{args.port}", [SERVICE_NAME],
        lambda server: recommender_pb2_grpc.add_RecommenderServicer_to_server(servicer, server),
        max_workers=args.threads,
    )
    handle.set_serving(True)
    print(f"echo-recommender listening on {args.host}:{handle.port}", flush=True)
    wait_for_termination(handle)


if __name__ == "__main__":
    main()
