"""The training-loss plot stored beside each published version.

A picture of the loss curve is the quickest check that a model really trained
(the student version's loss stayed flat and nobody noticed).
"""

from __future__ import annotations

import io
from collections.abc import Sequence


def loss_plot_png(loss_history: Sequence[float], validation_recall: Sequence[float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6, 3.5), dpi=100)
    axis = figure.add_subplot(1, 1, 1)
    epochs = list(range(1, len(loss_history) + 1))
    lines = axis.plot(epochs, loss_history, marker="o", color="tab:blue", label="training loss")
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("training loss")
    axis.set_title(title)
    if validation_recall:
        twin = axis.twinx()
        lines += twin.plot(list(range(1, len(validation_recall) + 1)), validation_recall, marker="s",
                           color="tab:orange", label="validation Recall@10")
        twin.set_ylabel("validation Recall@10")
    axis.legend(lines, [str(line.get_label()) for line in lines], loc="center right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
