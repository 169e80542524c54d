"""A real S3 API for tests: moto's server mode on a loopback port, in this process.

Its buckets live in this process's memory, so the server can be stopped (an
outage) and started again on the same port with its data intact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.request


class S3Server:
    def __init__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()


@contextlib.contextmanager
def s3_server(*buckets: str):
    """Starts the server, points the AWS_* environment at it (servers started
    meanwhile inherit it; so does fsspec here), creates the buckets."""
    server = S3Server()
    server.start()
    # moto keeps every server's buckets in this process's memory: start from an empty store, so
    # nothing one test module left under the same bucket and prefix is seen by the next.
    urllib.request.urlopen(urllib.request.Request(f"{server.endpoint}/moto-api/reset", method="POST"),
                           timeout=10).close()
    env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        import boto3

        for bucket in buckets:
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
