"""The dense 0/1 user x movie matrix of training interactions, built by numpy alone.

Why a module of its own: the closed-form kinds (EASE^R, DLAE), the sequential
kind and the neighbourhood-popularity baseline all start from this matrix, and
the baseline must not import ``models`` for it, because ``models`` imports
TensorFlow. One definition keeps the matrix every one of them sees the same
(float32, a row per user of the CSR, a column per movie).
"""

from __future__ import annotations

import numpy as np


def binary_history(train_csr, n_items: int) -> np.ndarray:
    """Dense 0/1 user x item matrix of training interactions."""
    indptr, items = train_csr
    matrix = np.zeros((len(indptr) - 1, n_items), dtype=np.float32)
    matrix[np.repeat(np.arange(len(indptr) - 1), np.diff(indptr)), items] = 1.0
    return matrix
