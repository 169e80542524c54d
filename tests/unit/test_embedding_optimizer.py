"""Lazy embedding updates: only the batch's rows move, they move as Adam says, and small tables keep AdamW."""

from __future__ import annotations

import numpy as np
import pytest

from trainer_service import embedding_optimizer, models
from trainer_service.embedding_optimizer import LazyAdamW, choose
from trainer_service.hyperparams import COMMON

tf = models.tf
LR, WD, B1, B2, EPS = 0.01, 0.1, 0.9, 0.999, 1e-7


def _table(rows: int = 6, width: int = 3):
    layer = tf.keras.layers.Embedding(rows, width)
    layer.build((None,))
    layer.embeddings.assign(np.arange(rows * width, dtype=np.float32).reshape(rows, width) / 10)
    return layer


def _sparse(rows: list[int], values: np.ndarray, shape) -> tf.IndexedSlices:
    return tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(rows, tf.int64), tf.constant(shape))


def _adam_row(row: np.ndarray, grads: list, decay: float = WD) -> np.ndarray:
    """Decoupled-decay Adam on one row, stepped only at the steps (1-based) it has a gradient: (step, grad)."""
    m = v = np.zeros_like(row)
    for step, grad in grads:
        row = row - LR * decay * row
        m = B1 * m + (1 - B1) * grad
        v = B2 * v + (1 - B2) * grad**2
        alpha = LR * np.sqrt(1 - B2**step) / (1 - B1**step)
        row = row - alpha * m / (np.sqrt(v) + EPS)
    return row


def test_only_the_batch_rows_move_and_they_follow_adam_at_their_own_steps():
    layer = _table()
    start = layer.embeddings.numpy().copy()
    optimizer = LazyAdamW([layer], learning_rate=LR, weight_decay=WD, jit_compile=False)
    g1 = np.array([[1.0, -2.0, 0.5], [0.3, 0.3, -0.1]], np.float32)
    g2 = np.array([[-1.0, 0.2, 0.4]], np.float32)
    optimizer.apply_gradients([(_sparse([0, 2], g1, [6, 3]), layer.embeddings)])
    optimizer.apply_gradients([(_sparse([2], g2, [6, 3]), layer.embeddings)])
    after = layer.embeddings.numpy()
    np.testing.assert_array_equal(after[[1, 3, 4, 5]], start[[1, 3, 4, 5]])  # never in a batch: untouched
    # Row 0 was in step 1 only: plain AdamW would keep moving it by momentum (and decay) in step 2.
    np.testing.assert_allclose(after[0], _adam_row(start[0], [(1, g1[0])]), rtol=1e-5)
    np.testing.assert_allclose(after[2], _adam_row(start[2], [(1, g1[1]), (2, g2[0])]), rtol=1e-5)
    # The same two steps under plain AdamW move every row (decay) and row 0 again in step 2 (momentum).
    dense = tf.Variable(start)
    adamw = tf.keras.optimizers.AdamW(learning_rate=LR, weight_decay=WD, jit_compile=False)
    adamw.apply_gradients([(_sparse([0, 2], g1, [6, 3]), dense)])
    after_one = dense.numpy().copy()
    adamw.apply_gradients([(_sparse([2], g2, [6, 3]), dense)])
    assert np.all(dense.numpy()[[1, 3, 4, 5]] != start[[1, 3, 4, 5]])
    assert np.all(np.abs(dense.numpy()[0] - after_one[0]) > 1e-4)


def test_the_lazy_tables_learning_rate_is_a_multiple_of_the_runs():
    layer = _table()
    start = layer.embeddings.numpy().copy()
    other = tf.Variable(np.zeros((1, 3), np.float32))
    optimizer = LazyAdamW([layer], lazy_learning_rate_multiplier=10.0, learning_rate=LR / 10, weight_decay=0.0,
                          jit_compile=False)
    grad = np.array([[1.0, -2.0, 0.5]], np.float32)
    optimizer.apply_gradients([(_sparse([1], grad, [6, 3]), layer.embeddings), (tf.constant(grad), other)])
    np.testing.assert_allclose(layer.embeddings.numpy()[1], _adam_row(start[1], [(1, grad[0])], decay=0.0), rtol=1e-5)
    np.testing.assert_allclose(other.numpy()[0], -LR / 10 * np.sign(grad[0]), rtol=1e-4)  # Adam's first step


def test_duplicate_rows_in_a_batch_add_up_before_the_update():
    layer = _table()
    start = layer.embeddings.numpy().copy()
    grad = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], np.float32)
    LazyAdamW([layer], learning_rate=LR, weight_decay=WD, jit_compile=False).apply_gradients(
        [(_sparse([4, 4], grad, [6, 3]), layer.embeddings)])
    np.testing.assert_allclose(layer.embeddings.numpy()[4], _adam_row(start[4], [(1, grad.sum(0))]), rtol=1e-5)


def test_small_tables_and_multi_worker_runs_keep_plain_adamw():
    small = models.TwoTowerModel(943, 1682, COMMON)  # MovieLens 100K trains exactly as before
    choice = choose(small, 0.003, 0.0, replicas=1)
    assert type(choice.optimizer) is tf.keras.optimizers.AdamW
    assert choice.description == "adamw(lr=0.003, weight_decay=0)"
    rows = embedding_optimizer.SPARSE_UPDATE_MIN_ROWS
    assert rows > 162_541  # ML-25M's users and movies are not lazy (measured: lazy was worse there) ...
    ml25m = choose(models.TwoTowerModel(162_541, 62_423, COMMON), 0.003, 0.0, replicas=1)
    assert ml25m.deferred  # ... but deferred, which is AdamW's own result
    assert ml25m.description == ("deferred_adamw(embedding tables of 62423, 162541 rows; lr=0.003, weight_decay=0)"
                                 "+adamw(rest; lr=0.003, weight_decay=0)")
    # Negatives drawn inside the loss (BPR, uniform negatives) are reads no one can name before the step.
    assert not choose(models.BPRModel(162_541, 62_423, COMMON), 0.003, 0.0, replicas=1).lazy
    large = models.BPRModel(500, rows, COMMON)
    lazy = choose(large, 0.003, 0.05, replicas=1)
    assert isinstance(lazy.optimizer, LazyAdamW)
    # The movie vectors and biases are large; the 500 users are not.
    assert sorted(layer.input_dim for layer in lazy.optimizer._lazy_layers) == [rows, rows]
    assert lazy.description.startswith(f"lazy_adamw(embedding tables of {rows}, {rows} rows; lr=")
    assert lazy.description.endswith("+adamw(rest; lr=0.003, weight_decay=0.05)")
    assert type(choose(large, 0.003, 0.05, replicas=2).optimizer) is tf.keras.optimizers.AdamW


def test_a_compiled_xla_step_leaves_the_rows_outside_the_batch_untouched():
    model = models.TwoTowerModel(50, 400, COMMON, sampled=True)
    choice = choose(model, 0.01, 0.0, replicas=1, min_rows=100)
    model.compile(optimizer=choice.optimizer, jit_compile=True)
    items = np.array([3, 7, 7, 11], np.int32)
    batch = {"user": np.array([0, 1, 2, 3], np.int32), "item": items,
             "item_probability": np.full(4, 0.25, np.float32)}
    model.item_embeddings(items)  # builds the item tower
    before = model.item_tower.layers[0].embeddings.numpy().copy()
    dense_before = model.item_tower.layers[1].kernel.numpy().copy()
    model.fit(tf.data.Dataset.from_tensors(batch).repeat(3), verbose=0)
    after = model.item_tower.layers[0].embeddings.numpy()
    moved = np.flatnonzero(np.any(after != before, axis=1))
    assert moved.tolist() == [3, 7, 11]
    assert not np.array_equal(model.item_tower.layers[1].kernel.numpy(), dense_before)  # AdamW for the rest


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_a_lazy_table_is_excluded_from_the_dense_weight_decay(weight_decay):
    layer = _table()
    other = tf.Variable(np.ones((2, 2), np.float32))
    optimizer = LazyAdamW([layer], learning_rate=LR, weight_decay=weight_decay, jit_compile=False)
    optimizer.build([layer.embeddings, other])
    assert not optimizer._use_weight_decay(layer.embeddings)
    assert optimizer._use_weight_decay(other)


def test_a_large_run_records_lazy_updates_and_steps_several_batches_per_call(tmp_path, monkeypatch):
    from trainer_service import neural_kinds, synth
    from trainer_service.data import load_ratings_files
    from trainer_service.splits import make_split
    from trainer_service.training import resolve_hyperparameters, train_model

    synth.generate(tmp_path, users=200, movies=400, ratings=3_000, seed=1)
    split = make_split(load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv"), "last_n_per_user", 1, seed=0)
    monkeypatch.setattr(embedding_optimizer, "SPARSE_UPDATE_MIN_ROWS", 350)  # the 400-row movie tables, not users
    monkeypatch.setattr(neural_kinds, "LARGE_RUN_STEPS_PER_EXECUTION", 5)
    hp = resolve_hyperparameters("bpr", {"epochs": 1, "batch_size": 128})
    reports: list = []
    asked = {"n": 0}

    def should_stop():
        asked["n"] += 1
        return False

    model = train_model("bpr", split, hp, seed=0, on_epoch=reports.append, should_stop=should_stop)
    multiplier = embedding_optimizer.LAZY_LEARNING_RATE_MULTIPLIER
    assert model.selection["optimizer"] == (f"lazy_adamw(embedding tables of 400, 400 rows; lr={0.003 * multiplier:g},"
                                            " weight_decay=0.05)+adamw(rest; lr=0.003, weight_decay=0.05)")
    steps = reports[0].steps_per_epoch
    assert steps % 5 != 0  # so the last call of an epoch runs fewer steps
    assert [r.step for r in reports] == [steps]
    assert len(model.loss_history) == 1 and np.isfinite(model.loss_history[0])
    # Cancellation is still asked: before training, before every call of 5 steps, after the epoch.
    assert asked["n"] == 1 + -(-steps // 5) + 1


def _deferred_against_adamw(weight_decay: float, steps: int = 40, rows: int = 12, seed: int = 3):
    """The same sparse gradients through AdamW and through a deferred table: (adamw, deferred, optimizer)."""
    rng = np.random.default_rng(seed)
    layer = _table(rows)
    dense = tf.Variable(layer.embeddings.numpy().copy())
    other_a, other_b = tf.Variable(np.ones((2, 2), np.float32)), tf.Variable(np.ones((2, 2), np.float32))
    adamw = tf.keras.optimizers.AdamW(learning_rate=LR, weight_decay=weight_decay, jit_compile=False)
    deferred = LazyAdamW([], deferred_layers=[layer], learning_rate=LR, weight_decay=weight_decay,
                         jit_compile=False)
    for _ in range(steps):
        # A few rows a step, some rows skipped for long stretches (rows 0-2 are drawn often, the rest rarely).
        chosen = sorted(set(rng.choice(rows, size=3, p=np.r_[[0.25] * 3, [0.25 / (rows - 3)] * (rows - 3)])))
        grad = rng.normal(size=(len(chosen), 3)).astype(np.float32)
        dense_grad = rng.normal(size=(2, 2)).astype(np.float32)
        adamw.apply_gradients([(_sparse(chosen, grad, [rows, 3]), dense), (tf.constant(dense_grad), other_a)])
        deferred.bring_up_to_date([(layer, tf.constant(chosen))])  # as the model does before its forward pass
        deferred.apply_gradients([(_sparse(chosen, grad, [rows, 3]), layer.embeddings),
                                  (tf.constant(dense_grad), other_b)])
    np.testing.assert_allclose(other_b.numpy(), other_a.numpy(), rtol=1e-6)  # the rest is plain AdamW
    return dense.numpy(), layer, deferred


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_a_deferred_table_caught_up_holds_what_adamw_holds(weight_decay):
    adamw, layer, optimizer = _deferred_against_adamw(weight_decay)
    before = layer.embeddings.numpy().copy()
    # Rows that sat out the last steps are still behind AdamW (it kept moving them by momentum).
    assert np.abs(before - adamw).max() > 1e-3
    optimizer.catch_up(chunk_rows=5)  # in chunks that do not divide the 12 rows
    np.testing.assert_allclose(layer.embeddings.numpy(), adamw, rtol=2e-5, atol=2e-6)
    # Caught up twice is caught up once: nothing moves without a step in between.
    optimizer.catch_up()
    np.testing.assert_allclose(layer.embeddings.numpy(), adamw, rtol=2e-5, atol=2e-6)


def test_a_deferred_table_keeps_following_adamw_after_a_catch_up():
    rows = 12
    adamw, layer, optimizer = _deferred_against_adamw(0.05, steps=20)
    optimizer.catch_up()  # mid-training, as at an epoch's end
    dense = tf.Variable(adamw)
    # Continue both from equal weights: AdamW's slots must equal the deferred ones after the catch-up.
    index = optimizer._index_dict[optimizer._var_key(layer.embeddings)]
    m, v = optimizer._momentums[index].numpy(), optimizer._velocities[index].numpy()
    grad = np.random.default_rng(9).normal(size=(2, 3)).astype(np.float32)
    optimizer.bring_up_to_date([(layer, tf.constant([1, 7]))])
    optimizer.apply_gradients([(_sparse([1, 7], grad, [rows, 3]), layer.embeddings)])
    optimizer.catch_up()
    step = 21
    decay = 1 - LR * 0.05
    m_next, v_next = B1 * m, B2 * v
    m_next[[1, 7]] += (1 - B1) * grad
    v_next[[1, 7]] += (1 - B2) * grad**2
    alpha = LR * np.sqrt(1 - B2**step) / (1 - B1**step)
    expected = decay * dense.numpy() - alpha * m_next / (np.sqrt(v_next) + EPS)
    np.testing.assert_allclose(layer.embeddings.numpy(), expected, rtol=2e-5, atol=2e-6)


def test_a_training_run_with_deferred_tables_ends_where_plain_adamw_ends(tmp_path, monkeypatch):
    """Through train_model: the tables are built before the first trace, caught up at each epoch's end
    (validation reads them), and the exported vectors are AdamW's."""
    from trainer_service import neural_kinds, synth
    from trainer_service.data import load_ratings_files
    from trainer_service.splits import make_split
    from trainer_service.training import resolve_hyperparameters, train_model

    synth.generate(tmp_path, users=300, movies=400, ratings=4_000, seed=1)
    split = make_split(load_ratings_files(str(tmp_path), "ratings.csv", "movies.csv"), "last_n_per_user", 1, seed=0)
    monkeypatch.setattr(models, "SAMPLED_SOFTMAX_MIN_ITEMS", 300)
    monkeypatch.setattr(neural_kinds, "LARGE_RUN_WHOLE_BATCHES", False)  # the same example order on both paths
    hp = resolve_hyperparameters("two_tower", {"epochs": 2, "batch_size": 256, "patience": 2})

    def run(deferred_min_rows: int):
        monkeypatch.setattr(embedding_optimizer, "DEFERRED_UPDATE_MIN_ROWS", deferred_min_rows)
        return train_model("two_tower", split, hp, seed=0)

    deferred, plain = run(250), run(10**9)
    assert deferred.selection["optimizer"].startswith("deferred_adamw(embedding tables of 400, 300 rows;")
    assert plain.selection["optimizer"].startswith("adamw(")
    assert len(deferred.validation_history) == 2
    for ours, theirs in zip(deferred.validation_history, plain.validation_history, strict=True):
        assert ours["recall_at_10"] == pytest.approx(theirs["recall_at_10"], abs=1e-6)
    np.testing.assert_allclose(deferred.item_vectors, plain.item_vectors, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(deferred.user_vectors, plain.user_vectors, rtol=1e-3, atol=1e-3)
