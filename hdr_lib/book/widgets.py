"""ipywidgets for a live kernel: a short training run you can start from sliders, and a digit browser."""

from __future__ import annotations

import ipywidgets as w
import plotly.graph_objects as go
import torch
from IPython.display import HTML, display
from plotly.subplots import make_subplots

from hdr_lib.book import figures
from hdr_lib.config import PAPER
from hdr_lib.validation import ConfigError
from hdr_lib.book.render import in_book_build

# Each control's label at its own width: the default width cut "learning rate" and "epochs done" short.
LABEL = {"description_width": "initial"}
LIVE_NOTE = ("<div style='border-left:4px solid #1f77b4;padding:4px 10px;color:#333'><b>Live controls.</b> "
             "{what} They need a running Python kernel, as here in JupyterLab.</div>")


def _note(what: str) -> None:
    """In a live kernel, say what the controls do; in the book, hdr_lib.book.render puts its own note in their place."""
    if not in_book_build():
        display(HTML(LIVE_NOTE.format(what=what)))


def _growing_figure():
    """A figure to which points are added epoch by epoch: a FigureWidget where plotly's widget support
    (anywidget) is installed, else a plain figure redrawn into an Output after every epoch."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "test accuracy (%)"))
    fig.add_scatter(x=[], y=[], mode="lines+markers", name="loss", row=1, col=1)
    fig.add_scatter(x=[], y=[], mode="lines+markers", name="accuracy", row=1, col=2)
    fig.update_xaxes(title="epoch", dtick=1).update_layout(template=figures.TEMPLATE, height=340, showlegend=False)
    try:
        return go.FigureWidget(fig), None
    except Exception:  # plotly >= 6 needs the anywidget package for FigureWidget
        return fig, w.Output()


def live_experiment(data=None, max_epochs: int = 3, max_steps: int | None = None) -> w.VBox:
    """Sliders for epochs, batch size, learning rate and device, and a Run button that trains live.

    Training is capped at `max_epochs` (and `max_steps` optimiser steps in all, if given) so that a click
    costs seconds to a minute on a CPU, not the paper's 20 epochs.
    """
    from hdr_lib.train import train

    _note("Train the paper's network for a few epochs with the settings you choose and watch the curves grow.")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    epochs = w.IntSlider(value=1, min=1, max=max_epochs, description="epochs", style=LABEL)
    batch = w.SelectionSlider(options=[16, 32, 64, 128, 256, 512], value=PAPER.batch_size, description="batch size",
                              style=LABEL)
    lr = w.FloatLogSlider(value=PAPER.lr, base=10, min=-4, max=0, step=0.25, description="learning rate",
                          readout_format=".4f", style=LABEL)
    device = w.Dropdown(options=devices, value=devices[-1], description="device", style=LABEL)
    button = w.Button(description="Run", button_style="primary", icon="play")
    bar = w.IntProgress(min=0, max=1, description="epochs done", style=LABEL)
    status, log = w.HTML(), w.Output()
    fig, fig_out = _growing_figure()

    def draw():
        if fig_out is not None:
            with fig_out:
                fig_out.clear_output(wait=True)
                fig.show()

    def on_epoch(entry, _record):
        fig.data[0].x += (entry["epoch"],)
        fig.data[0].y += (entry["train_loss"],)
        fig.data[1].x += (entry["epoch"],)
        fig.data[1].y += (entry["test_accuracy"],)
        bar.value = entry["epoch"]
        status.value = (f"epoch {entry['epoch']}: loss {entry['train_loss']:.4f}, accuracy "
                        f"{entry['test_accuracy']:.2f} %, {entry['train_seconds']:.1f} s")
        draw()

    def run(_button):
        button.disabled = True
        for trace in fig.data:
            trace.x, trace.y = (), ()
        bar.max, bar.value = epochs.value, 0
        try:
            config = PAPER.replace(device=device.value, epochs=epochs.value, batch_size=batch.value, lr=lr.value)
            with log:
                log.clear_output()
                record = train(config, data=data, progress=True, on_epoch=on_epoch, max_steps=max_steps)
            if record["status"] == "complete":
                done = "done"
            elif "diverged" in record:  # train() stops a run whose loss is no longer finite
                done = f"stopped: {record['diverged']}"
            else:
                done = f"stopped after {len(record['epochs'])} of {config.epochs} epochs (capped at {max_steps} steps)"
            status.value = (f"<b>{done}</b> on {record['config']['device']}: test accuracy "
                            f"{record['test_accuracy']:.2f} % after {record['total_train_seconds']:.1f} s training")
        except ConfigError as exc:
            status.value = f"<b style='color:#c00'>cannot run:</b> {exc}"
        finally:
            button.disabled = False

    button.on_click(run)
    draw()
    controls = w.HBox([w.VBox([epochs, batch]), w.VBox([lr, device]), w.VBox([button, bar])])
    return w.VBox([controls, status, fig_out if fig_out is not None else fig, log])


def digit_browser(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> w.VBox:
    """A slider over the test digits (all, or only the misclassified ones) showing each digit and the
    model's predicted probabilities."""
    from hdr_lib.data import to_float
    from hdr_lib.train import predict_proba

    _note("Step through the test digits and see the probabilities the trained model gives each class.")
    probs = predict_proba(model, to_float(images))
    wrong = (probs.argmax(1) != labels).nonzero().flatten().tolist()
    only_wrong = w.Checkbox(value=False, description=f"only the {len(wrong)} misclassified", indent=False,
                            style=LABEL)
    slider = w.IntSlider(value=0, min=0, max=len(labels) - 1, description="test image", continuous_update=False,
                         style=LABEL)
    out = w.Output()

    def draw(index: int) -> None:
        p = probs[index]
        # two lines: one would not fit the digit's narrow figure
        title = f"test image {index}<br>true {int(labels[index])}, predicted {int(p.argmax())} (p = {p.max():.3f})"
        figures.digit_image(images[index], title).show()
        figures.probability_bars(p, int(labels[index])).show()

    def show(_change=None):
        index = wrong[slider.value] if only_wrong.value and wrong else slider.value
        with out:
            out.clear_output(wait=True)
            draw(index)

    if in_book_build():  # a static page cannot show figures inside a widget: draw the starting state plainly
        draw(0)

    def switch(_change):
        slider.max = max(len(wrong) - 1, 0) if only_wrong.value else len(labels) - 1
        slider.value = 0
        show()

    slider.observe(show, names="value")
    only_wrong.observe(switch, names="value")
    if not in_book_build():
        show()
    return w.VBox([w.HBox([slider, only_wrong]), out])
