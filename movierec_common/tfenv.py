"""The one place that prepares the environment before TensorFlow is imported.

TFRS 0.7.7 is written against Keras 2, which TensorFlow 2.16+ only provides as
``tf_keras`` when ``TF_USE_LEGACY_KERAS=1`` is set *before* the first
``import tensorflow``. TensorFlow's C++ start-up chatter (oneDNN notices, CUDA
probing) is not the operator's problem, so it is silenced here too.

Every module that needs TensorFlow imports it through :func:`tensorflow`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")

_tf: Any = None


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """TensorFlow's C++ runtime logs through absl before anything can configure
    it (CUDA probing, "All log messages before absl::InitializeLog()"), ignoring
    TF_CPP_MIN_LOG_LEVEL; the only off switch is the file descriptor itself.
    Set MOVIEREC_TF_VERBOSE=1 to see it."""
    if os.environ.get("MOVIEREC_TF_VERBOSE") == "1":
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tensorflow() -> Any:
    """Return the ``tensorflow`` module, imported with the environment above."""
    global _tf
    if _tf is None:
        with _native_stderr_silenced():
            import tensorflow as tf
            import tensorflow_recommenders  # noqa: F401 - loads its kernels now, quietly

            tf.constant(0.0) + 1.0  # initialises the CPU device, which logs too

        tf.get_logger().setLevel(logging.ERROR)
        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # pragma: no cover - absl ships with TF
            pass
        _tf = tf
    return _tf
