"""Interactive plotly figures for the book: the data, the training curves, the paper's claims beside ours."""

from __future__ import annotations

import math
import textwrap

import plotly.express as px
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from hdr_lib import paper
from hdr_lib.book.scorecard import HEADLINE_PATH, PATHS, SECOND_PATH
from hdr_lib.measure.queries import NOT_MEASURED
from hdr_lib.measure.stats import summarize

TEMPLATE = "plotly_white"
PAPER_COLOUR = "#9e9e9e"  # every "paper (claimed)" mark is grey, every measurement coloured
DEVICE_COLOURS = {"cpu": "#1f77b4", "cuda": "#2ca02c"}

# Plotly's toolbar (the "modebar": zoom, pan, download) covers the figure's top right corner, this high (26 px in the
# book's theme); on a phone it spans nearly the whole width. The title goes below that band, so that no toolbar covers
# it however narrow the output is (JupyterLab shows the toolbar all the time, the book on hover). A title's lines after
# its first are plotly's subtitle: plotly draws a title of several lines from its first baseline, not its top (up into
# the toolbar), but a subtitle below the title's real box. Each line stays short enough for a 390 px phone.
TOOLBAR_PX = 32
TITLE_LINE_PX, SUBTITLE_LINE_PX = 24, 20  # the template's 17 px title, a subtitle line of up to 14 px
SUBTITLE_CHARS = 46  # characters a subtitle line holds at 390 px; longer plain lines are wrapped (a styled one is not)


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    text, *subtitle = title.split("<br>")
    subtitle = [part for line in subtitle for part in ([line] if "<" in line else textwrap.wrap(line, SUBTITLE_CHARS))]
    top = TOOLBAR_PX + TITLE_LINE_PX * bool(text) + SUBTITLE_LINE_PX * len(subtitle) + 26  # + room above the plot
    # (the margin is popped from kw before **kw is unpacked: arguments are evaluated in order)
    fig.update_layout(template=TEMPLATE, margin=dict(l=60, r=30, t=top, b=50) | kw.pop("margin", {}), **kw, title=dict(
        text=text, subtitle_text="<br>".join(subtitle), yref="container", y=1, yanchor="top", pad=dict(t=TOOLBAR_PX)))
    return fig


def digit_grid(images: torch.Tensor, labels: torch.Tensor, n: int = 30, cols: int = 10) -> go.Figure:
    """The first `n` digits in a grid, each titled with its label; hover shows the pixel value."""
    fig = px.imshow(images[:n].numpy(), facet_col=0, facet_col_wrap=cols, binary_string=True,
                    facet_row_spacing=0.04, facet_col_spacing=0.01)
    names = [str(int(y)) for y in labels[:n]]
    fig.for_each_annotation(lambda a: a.update(text=f"label {names[int(a.text.split('=')[1])]}"))
    fig.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    return _layout(fig, f"The first {n} training digits", height=110 * math.ceil(n / cols) + 80)


def class_balance(train_labels: torch.Tensor, test_labels: torch.Tensor) -> go.Figure:
    """Images per digit in the training and the test set, as grouped bars."""
    fig = go.Figure()
    for name, labels in (("train (60,000)", train_labels), ("test (10,000)", test_labels)):
        counts = torch.bincount(labels, minlength=10)
        share = 100 * counts / counts.sum()
        fig.add_bar(x=list(range(10)), y=counts.tolist(), name=name, customdata=share.tolist(),
                    hovertemplate="digit %{x}: %{y} images (%{customdata:.2f} %)<extra></extra>")
    fig.update_xaxes(title="digit", dtick=1).update_yaxes(title="images")
    return _layout(fig, "Class balance: images per digit", barmode="group")


def pixel_histogram(images: torch.Tensor) -> go.Figure:
    """How often each of the 256 grey levels occurs (log scale: most pixels are background 0)."""
    counts = torch.bincount(images.flatten().long(), minlength=256)
    fig = go.Figure(go.Bar(x=list(range(256)), y=counts.tolist(), marker_color=DEVICE_COLOURS["cpu"],
                           hovertemplate="grey level %{x} (%{customdata:.3f} after scaling): %{y:,} pixels"
                                         "<extra></extra>", customdata=[v / 255 for v in range(256)]))
    fig.update_xaxes(title="grey level (0 = background, 255 = ink); the model sees level / 255")
    fig.update_yaxes(title="pixels", type="log")
    return _layout(fig, "Pixel values over the training set", bargap=0)


def _curve_data(runs: dict[str, dict], metrics, last: int) -> tuple[list, list]:
    """x and y of every trace (metric-major, as epoch_curves adds them) up to epoch `last`."""
    xs, ys = [], []
    for metric, _ in metrics:
        for record in runs.values():
            epochs = [e for e in record["epochs"] if e["epoch"] <= last]
            xs.append([e["epoch"] for e in epochs])
            ys.append([e[metric] for e in epochs])
    return xs, ys


def _padded_range(values: list[float]) -> list[float]:
    lo, hi = min(values, default=0), max(values, default=1)
    pad = 0.08 * (hi - lo or abs(hi) or 1)
    return [lo - pad, hi + pad]


def epoch_curves(runs: dict[str, dict], metrics=(("train_loss", "training loss"),
                                                  ("test_accuracy", "test accuracy (%)"))) -> go.Figure:
    """Per-epoch curves of several runs side by side; the slider replays them epoch by epoch."""
    n_epochs = max((len(r["epochs"]) for r in runs.values()), default=0)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[title for _, title in metrics])
    xs, ys = _curve_data(runs, metrics, n_epochs)
    for k, (x, y) in enumerate(zip(xs, ys)):
        col, i = divmod(k, len(runs))
        label = list(runs)[i]
        fig.add_scatter(x=x, y=y, mode="lines+markers", name=label, legendgroup=label, showlegend=col == 0,
                        line=dict(color=px.colors.qualitative.Plotly[i % 10]), row=1, col=col + 1)
    for col, (metric, _) in enumerate(metrics):  # fixed axes, so replaying does not rescale them
        values = [v for v in sum(ys[col * len(runs):(col + 1) * len(runs)], []) if v is not None]
        if metric == "train_loss" and values and min(values) > 0:  # a loss falls by orders of magnitude
            fig.update_yaxes(type="log", title_text="log scale", row=1, col=col + 1,
                             range=_padded_range([math.log10(v) for v in values]))
        else:
            fig.update_yaxes(range=_padded_range(values), row=1, col=col + 1)
    steps = []
    for k in range(1, n_epochs + 1):
        x, y = _curve_data(runs, metrics, k)
        steps.append(dict(method="restyle", label=str(k), args=[{"x": x, "y": y}]))
    fig.update_xaxes(title="epoch", range=[0.5, max(n_epochs, 1) + 0.5], dtick=max(1, n_epochs // 10))
    # The legend goes under the slider, where it can take as many lines as there are runs without
    # covering the title or the curves; the figure grows by one line per two runs.
    legend_lines = math.ceil(len(runs) / 2)
    _layout(fig, "Per-epoch curves<br>drag the slider to replay them epoch by epoch", height=480 + 22 * legend_lines,
            sliders=[dict(active=max(n_epochs - 1, 0), steps=steps, currentvalue=dict(prefix="up to epoch "),
                          pad=dict(t=50), y=0, yanchor="top")],
            legend=dict(orientation="h", x=0, y=0.01, yanchor="bottom", yref="container"))
    return fig.update_layout(margin_b=150 + 22 * legend_lines)


PAPER_ACCURACY = {"paper (claimed) CPU": paper.CPU_ACCURACY, "paper (claimed) GPU": paper.GPU_ACCURACY}  # §4.2


def accuracy_ci(groups: dict[str, list[float]], claims: dict[str, float] | None = None) -> go.Figure:
    """Test accuracy per group: every run as a dot, the mean with its 95 % interval, and `claims` in grey (the
    paper's CPU and GPU accuracy: `PAPER_ACCURACY`)."""
    fig = go.Figure()
    for i, (label, values) in enumerate(groups.items()):
        s = summarize(values)
        if s["n"] == 0:
            continue
        fig.add_scatter(x=[label] * s["n"], y=values, mode="markers", name=f"{label}: single runs",
                        marker=dict(size=7, opacity=0.5, color=px.colors.qualitative.Plotly[i % 10]))
        half = None if s["ci95_high"] is None else s["ci95_high"] - s["mean"]
        fig.add_scatter(x=[label], y=[s["mean"]], mode="markers", name=f"{label}: mean, 95 % CI (n={s['n']})",
                        marker=dict(size=14, symbol="line-ew-open", color=px.colors.qualitative.Plotly[i % 10],
                                    line=dict(width=3)),
                        error_y=dict(type="data", array=[half], visible=half is not None))
    for label, value in (claims or {}).items():
        fig.add_scatter(x=[label], y=[value], mode="markers+text", name=f"{label}",
                        marker=dict(symbol="diamond", size=12, color=PAPER_COLOUR), text=[f"{value} %"],
                        textposition="top center", cliponaxis=False)
    fig.update_yaxes(title="test accuracy (%)")
    return _layout(fig, "Test accuracy with 95 % intervals<br>our runs; the paper's claims in grey",
                   height=480, legend=dict(orientation="h", y=-0.15, x=0))


def _digit_heatmap(image: torch.Tensor) -> go.Heatmap:
    return go.Heatmap(z=image.flip(0).tolist(), colorscale="gray_r", showscale=False, zmin=0, zmax=255,
                      hovertemplate="row %{y}, col %{x}: %{z}<extra></extra>")


def misclassified(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, limit: int = 60) -> go.Figure:
    """The test digits the model gets wrong, one at a time: a slider steps through them, each with its
    predicted probabilities beside it."""
    preds = probs.argmax(1)
    wrong = (preds != labels).nonzero().flatten()[:limit].tolist()
    fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6],
                        subplot_titles=("digit (hover for grey levels)", "predicted probabilities, true digit green"))
    if not wrong:
        return _layout(fig, "No misclassified test digits")
    title = lambda i: f"test image {i}: true {int(labels[i])}, predicted {int(preds[i])}"  # noqa: E731
    fig.add_trace(_digit_heatmap(images[wrong[0]]), row=1, col=1)
    fig.add_trace(_prob_bar(probs[wrong[0]], int(labels[wrong[0]])), row=1, col=2)
    steps = []
    for k, i in enumerate(wrong):
        bar = _prob_bar(probs[i], int(labels[i]))
        steps.append(dict(method="update", label=str(k + 1), args=[
            {"z": [images[i].flip(0).tolist(), None], "y": [None, list(bar.y)],
             "marker.color": [None, list(bar.marker.color)]}, {"title.text": title(i)}]))
    fig.update_yaxes(showticklabels=False, scaleanchor="x", constrain="domain", row=1, col=1)
    fig.update_xaxes(showticklabels=False, constrain="domain", row=1, col=1)
    fig.update_xaxes(title="digit", dtick=1, row=1, col=2).update_yaxes(title="probability", range=[0, 1],
                                                                         row=1, col=2)
    n_wrong = int((preds != labels).sum())
    return _layout(fig, title(wrong[0]), height=450, showlegend=False, sliders=[dict(
        steps=steps, currentvalue=dict(prefix=f"misclassified digit (of {n_wrong}; first {len(wrong)} shown): "),
        pad=dict(t=40))])


def _prob_bar(p: torch.Tensor, true_label: int | None) -> go.Bar:
    colours = [DEVICE_COLOURS["cuda"] if d == true_label else DEVICE_COLOURS["cpu"] for d in range(10)]
    return go.Bar(x=list(range(10)), y=p.tolist(), marker_color=colours,
                  hovertemplate="digit %{x}: p = %{y:.4f}<extra></extra>")


def probability_bars(probs: torch.Tensor, true_label: int | None = None) -> go.Figure:
    """The model's softmax output for one image; the true digit's bar in green."""
    fig = go.Figure(_prob_bar(probs, true_label))
    fig.update_xaxes(title="digit", dtick=1).update_yaxes(title="probability", range=[0, 1])
    title = "Predicted probabilities" + (f"<br>true digit {true_label} in green" if true_label is not None else "")
    return _layout(fig, title, height=320)


def digit_image(image: torch.Tensor, title: str = "") -> go.Figure:
    """One 28x28 digit as a heatmap (hover shows each grey level)."""
    fig = go.Figure(_digit_heatmap(image))
    fig.update_yaxes(showticklabels=False, scaleanchor="x").update_xaxes(showticklabels=False)
    return _layout(fig, title, height=350, width=340, margin=dict(l=20, r=20))  # no tick labels: room for the title


def bench_bars(rows: list[dict], unit: str = "seconds per epoch",
               title: str = "Fast path vs plain PyTorch loop<br>data on device, fused SGD, CUDA graph") -> go.Figure:
    """Training seconds of the fast and the reference path, per device (rows: device, path, seconds list)."""
    fig = go.Figure()
    # the fast path run other ways (bench --fast-variant), each in a colour of its own
    others = sorted({r["path"] for r in rows} - {"reference", "fast"})
    ways = [("reference", PAPER_COLOUR), ("fast", DEVICE_COLOURS["cpu"])] + list(
        zip(others, ("#8c8c8c", "#bcbd22", "#17becf")))  # as many as hdr_lib.measure.bench.VARIANTS
    for path, colour in ways:
        for row in (r for r in rows if r["path"] == path):
            s = summarize(row["seconds"])
            fig.add_bar(x=[row["device"]], y=[s["mean"]], name=path if path in others else f"{path} path",
                        marker_color=colour,
                        legendgroup=path, showlegend=row is next(r for r in rows if r["path"] == path),
                        text=[f"{s['mean']:.2f} s (n={s['n']})"], textposition="outside",
                        error_y=dict(type="data", symmetric=False, array=[s["max"] - s["mean"]],
                                     arrayminus=[s["mean"] - s["min"]]))
    fig.update_yaxes(title=f"{unit} (mean; whiskers span min to max)")
    return _layout(fig, title, barmode="group")


def step_time_split(profile: dict, top_ops: int = 4, title: str | None = None) -> go.Figure:
    """One training step's wall time split by kind of operator (`hdr_lib.measure.profiling.step_profile`), largest first;
    hovering a bar lists the operators behind it. A bench record's `profile` (its `parts`, no operators) is split by
    part in its order, titled `title`."""
    kinds = list((profile.get("kinds") or profile["parts"]).items())[::-1]  # plotly draws the first bar at the bottom
    none = "time no operator accounts for" if "ops" in profile else ""  # a bench profile's parts name no operators
    top = {kind: sorted(profile.get("ops", {}).get(kind, {}).items(), key=lambda item: item[1], reverse=True)[:top_ops]
           for kind, _ in kinds}
    hover = ["<br>".join(f"{name}: {ms:.3f} ms" for name, ms in top[kind]) or none for kind, _ in kinds]
    total = profile["ms_per_step"]
    fig = go.Figure(go.Bar(x=[ms for _, ms in kinds], y=[kind for kind, _ in kinds], orientation="h",
                           marker_color=DEVICE_COLOURS["cpu"], customdata=hover,
                           text=[f"{ms:.2f} ms ({100 * ms / total:.0f} %)" for _, ms in kinds], textposition="auto",
                           hovertemplate="%{y}: %{x:.3f} ms per step<br>%{customdata}<extra></extra>"))
    # automargin: room for the kinds' names, however long
    fig.update_xaxes(title=f"ms per step (mean of {profile['steps']} profiled steps)").update_yaxes(automargin=True)
    return _layout(fig, title or f"Where a training step's {total:.2f} ms go<br>{profile['path']} path, "
                        f"{profile['device'].upper()}, under the profiler", height=140 + 36 * len(kinds))


def lr_schedule(epochs: list[int], lrs: list[float]) -> go.Figure:
    """The learning rate of every epoch (our reading of the paper's "step decay"), log scale."""
    fig = go.Figure(go.Scatter(x=epochs, y=lrs, mode="lines+markers", line_shape="hv",
                               hovertemplate="epoch %{x}: lr %{y}<extra></extra>"))
    fig.update_xaxes(title="epoch", dtick=1).update_yaxes(title="learning rate (log scale)", type="log")
    return _layout(fig, "Learning rate per epoch", height=320)


def memory_bars(items: dict[str, int | None]) -> go.Figure:
    """Bytes on a log scale: what LeNet-5 needs, what was measured ("not yet measured" where None), and the
    memory the paper reports in use (grey, §4.3)."""
    items = {**items, f"paper (claimed): ~{paper.GPU_MEMORY_GB:g} GB in use": paper.GPU_MEMORY_GB * 1e9}
    known = [v for v in items.values() if v]
    fig = go.Figure(go.Bar(y=list(items), x=[v or None for v in items.values()], orientation="h",
                           marker_color=[PAPER_COLOUR if k.startswith("paper") else DEVICE_COLOURS["cpu"]
                                         for k in items],
                           text=[f"{v / 2**20:,.1f} MiB" if v else "" for v in items.values()],
                           textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:,} bytes<extra></extra>"))
    for label, value in items.items():
        if not value:
            fig.add_annotation(y=label, x=math.log10(min(known)), text=NOT_MEASURED, showarrow=False,
                               xanchor="left", font=dict(color="#c00"))
    fig.update_xaxes(title="bytes (log scale)", type="log",
                     range=[math.log10(min(known)) - 0.3, math.log10(max(known)) + 0.6])
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Memory: what the network needs<br>vs what was reported", height=140 + 45 * len(items))


def time_figure(rows: list, live: dict | None = None) -> go.Figure:
    """Paper's and our training times (log scale): per device the paper's bar, then ours on each path with the
    95 % interval where there is one, and the live run of this build when given. A bar with no record is a
    visible "not yet measured" label, not an empty slot. `rows`: scorecard.scorecard()'s."""
    fig = go.Figure()
    labels = ["CPU", "GPU"]
    claimed = [paper.CPU_SECONDS, paper.GPU_SECONDS]
    fig.add_bar(name="paper (its 2017-era hardware)", x=labels, y=claimed, text=[f"{v:g} s" for v in claimed],
                textposition="inside", marker_color="#9e9e9e")
    known = list(claimed)
    for path, colour in ((HEADLINE_PATH, "#1f77b4"), (SECOND_PATH, "#ff7f0e")):
        means, err_hi, err_lo, text = [], [], [], []
        for key in ("cpu_time", "gpu_time"):
            cell = next(r for r in rows if r.claim.key == key).cells[path]
            m = cell.measured or {}
            mean = m.get("mean")
            means.append(mean)
            err_hi.append((m["ci95_high"] - mean) if m.get("ci95_high") is not None else 0)
            err_lo.append((mean - m["ci95_low"]) if m.get("ci95_low") is not None else 0)
            text.append("" if mean is None else f"{mean:.1f} s<br>n = {m['n']}")
            if mean is not None:
                known.append(mean)
        fig.add_bar(name=f"ours, {path} path (95 % CI)", x=labels, y=means, text=text, textposition="inside",
                    marker_color=colour, insidetextanchor="start",
                    error_y=dict(type="data", array=err_hi, arrayminus=err_lo, visible=True))
    if live is not None:
        device = "GPU" if live["config"]["device"] == "cuda" else "CPU"
        epochs = len(live.get("epochs", []))
        y = [live["total_train_seconds"] if label == device else None for label in labels]
        fig.add_bar(name=f"live run of this build, {live['config'].get('path', '?')} path, {epochs} epoch(s)",
                    x=labels, y=y, marker_color="#2ca02c", textposition="inside",
                    text=[f"{v:.1f} s" if v is not None else "" for v in y])
        known.append(live["total_train_seconds"])
    # The slots with no record: a label where the bar would stand (plotly draws no text for a missing bar).
    groups = 3 + (live is not None)
    for i, label in enumerate(labels):
        for j, path in enumerate(PATHS):
            cell = next(r for r in rows if r.claim.key == ("cpu_time", "gpu_time")[i]).cells[path]
            if cell.measured is None:
                fig.add_annotation(x=i + (j + 1 - (groups - 1) / 2) * 0.8 / groups, y=0.02, yref="paper",
                                   text=NOT_MEASURED.replace(" ", "<br>", 1), showarrow=False, textangle=-90,
                                   yanchor="bottom", font=dict(size=11, color="#555"))
    # A log axis that starts a decade below the shortest bar: every bar tall enough to hold its label.
    low, high = math.log10(min(known)) - 1, math.log10(max(known)) + 0.3
    return _layout(fig, f"Training time for {paper.EPOCHS} epochs", barmode="group", yaxis_type="log",
                   yaxis_dtick=1, yaxis_tickformat=",d",  # one label a decade: 10, 100, 1,000 (no 2s and 5s)
                   yaxis_title="training time (s, log scale)", yaxis_range=[low, high], height=440,
                   uniformtext=dict(minsize=10, mode="show"), legend=dict(orientation="h", y=-0.15), margin=dict(b=80))


def _not_measured_bar(fig: go.Figure, x, col: int, text: str = NOT_MEASURED) -> None:
    """A framed "not yet measured" in subplot `col`, where our bar would stand."""
    fig.add_annotation(x=x, y=0.5, yref=f"y{col if col > 1 else ''} domain", xref=f"x{col if col > 1 else ''}",
                       text=text.replace(" ", "<br>", 1), showarrow=False, font=dict(color="#c00", size=13),
                       bordercolor="#c00", borderpad=6, borderwidth=1.5, bgcolor="#fff5f5")


def claims_figure(rows: list) -> go.Figure:
    """The paper's three main claims beside ours (reference path; `rows`: scorecard.scorecard()'s): the speedup,
    the CPU accuracy and the CPU time, the paper's bar in grey. A claim with no record of ours is a framed
    "not yet measured" where our bar would stand, never an empty slot."""
    # short panel titles: three side by side must fit a phone's 390 px
    panels = (("speedup", "speedup (x)", "x"), ("cpu_accuracy", "CPU accuracy (%)", "%"),
              ("cpu_time", "CPU time (s)", "s"))
    by_key = {r.claim.key: r for r in rows}
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title, _ in panels],
                        horizontal_spacing=0.1)
    for col, (key, _, unit) in enumerate(panels, start=1):
        row = by_key[key]
        ours = (row.headline.measured or {}).get("mean")
        fmt = (lambda v: f"{v:.1f} {unit}") if unit != "s" else (lambda v: f"{v:,.0f} s")
        fig.add_bar(x=["paper"], y=[row.claim.value], marker_color=PAPER_COLOUR, text=[fmt(row.claim.value)],
                    textposition="outside", cliponaxis=False, showlegend=False, row=1, col=col,
                    hovertemplate=f"paper (claimed, its 2017-era hardware): %{{y}} {unit}<extra></extra>")
        if ours is None:
            fig.add_bar(x=["ours"], y=[None], showlegend=False, row=1, col=col)  # keeps the slot on the axis
            _not_measured_bar(fig, "ours", col)
        else:
            fig.add_bar(x=["ours"], y=[ours], marker_color=DEVICE_COLOURS["cpu"], text=[fmt(ours)],
                        textposition="outside", cliponaxis=False, showlegend=False, row=1, col=col,
                        hovertemplate=f"ours (reference path): %{{y:.4g}} {unit}<extra></extra>")
        values = [v for v in (row.claim.value, ours) if v is not None]
        if unit == "%":  # accuracies differ in the first decimal: an axis from 95 % shows it
            fig.update_yaxes(range=[95, 100.4], row=1, col=col)
        else:
            fig.update_yaxes(range=[0, 1.2 * max(values)], row=1, col=col)
    fig.update_annotations(font_size=13)
    return _layout(fig, "The paper's claims (grey) and ours<br>speedup = CPU time / GPU time<br>ours: the "
                        "reference path", height=420, bargap=0.35,
                   margin=dict(l=40, r=20, b=40))


def precision_figure(rows: list[dict]) -> go.Figure:
    """Chapter 11: seconds per epoch and test accuracy, float32 against bfloat16 (and float16 on CUDA), per
    device (`futurework.precision_rows`); an unmeasured group is a "not yet measured" label."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("seconds per epoch (mean, 95 % CI)",
                                                        "test accuracy (%) (mean, 95 % CI)"))
    names = {"off": "float32", "bf16": "bfloat16", "fp16": "float16"}
    for col, metric in enumerate(("seconds_per_epoch", "accuracy"), start=1):
        for r in (r for r in rows if r[metric]["n"]):
            s = r[metric]
            half = None if s["ci95_high"] is None else s["ci95_high"] - s["mean"]
            fig.add_bar(x=[f"{r['device'].upper().replace('CUDA', 'GPU')} {names[r['amp']]}"], y=[s["mean"]],
                        showlegend=False, row=1, col=col, textangle=0,
                        marker_color=DEVICE_COLOURS[r["device"]] if r["amp"] == "off" else "#ff7f0e",
                        text=[f"{s['mean']:.{1 if metric == 'seconds_per_epoch' else 2}f} (n={s['n']})"],
                        textposition="inside", error_y=dict(type="data", array=[half], visible=half is not None))
    missing = [f"{r['device'].upper().replace('CUDA', 'GPU')} {names[r['amp']]}" for r in rows
               if not r["seconds_per_epoch"]["n"]]
    accuracies = [r["accuracy"]["mean"] for r in rows if r["accuracy"]["n"]]
    if accuracies:
        fig.update_yaxes(range=[min(accuracies) - 0.5, 100], row=1, col=2)
    title = "Mixed precision: float32 vs bfloat16"
    if missing:  # one line for every group with no record, not a label per bar
        title += f"<br><span style='color:#c00;font-size:13px'>{', '.join(missing)}:<br>{NOT_MEASURED}</span>"
    return _layout(fig, title, height=400)


def ddp_figure(rows: list[dict]) -> go.Figure:
    """Chapter 11: seconds per epoch of data-parallel CPU runs (`futurework.ddp_rows`), split into computing and
    the gradient all-reduce, one bar per session and number of processes."""
    fig = go.Figure()
    sessions = {session: i + 1 for i, session in enumerate(sorted({str(r["session"]) for r in rows}))}  # as the table
    labels = [f"session {sessions[str(r['session'])]}: {r['world_size']} process{'es' if r['world_size'] > 1 else ''}"
              f" x {r['threads_per_rank']} thread{'s' if r['threads_per_rank'] > 1 else ''}" for r in rows]
    epoch = [r["seconds_per_epoch"]["mean"] for r in rows]
    share = [r["comm_share"]["mean"] or 0 for r in rows]
    fig.add_bar(y=labels, x=[e * (1 - c) for e, c in zip(epoch, share)], orientation="h", name="computing",
                marker_color=DEVICE_COLOURS["cpu"])
    fig.add_bar(y=labels, x=[e * c for e, c in zip(epoch, share)], orientation="h", name="all-reduce",
                marker_color="#ff7f0e", text=[f"{e:.1f} s/epoch" for e in epoch], textposition="outside",
                cliponaxis=False)
    fig.update_xaxes(title="seconds per epoch (mean)").update_yaxes(autorange="reversed", automargin=True)
    return _layout(fig, "Data parallelism on the CPU<br>where an epoch's time goes", barmode="stack",
                   height=160 + 40 * len(rows), legend=dict(orientation="h", y=-0.25))


def network_figure(rows: list[dict]) -> go.Figure:
    """Chapter 11: seconds per epoch against training FLOPs per epoch (log-log), LeNet-5 and the residual
    network per path and device (`futurework.network_rows`); a line of constant rate through LeNet-5's fast
    point shows what the same GFLOP/s would give."""
    fig = go.Figure()
    names = {"lenet5": "LeNet-5", "resnet": "ResNet"}
    for r in (r for r in rows if r["seconds_per_epoch"]["n"]):
        s = r["seconds_per_epoch"]
        fig.add_scatter(x=[r["train_flops_per_epoch"]], y=[s["mean"]], mode="markers+text",
                        name=f"{names[r['model']]}, {r['path']} path, {r['device'].upper()}",
                        text=[f"{names[r['model']]} {r['path']}"], textposition="top center",
                        marker=dict(size=12, color=DEVICE_COLOURS["cpu"] if r["path"] == "fast" else PAPER_COLOUR,
                                    symbol="circle" if r["model"] == "lenet5" else "square"),
                        hovertemplate="%{x:.3g} FLOPs per epoch: %{y:.1f} s per epoch<extra></extra>")
    base = next((r for r in rows if r["model"] == "lenet5" and r["path"] == "fast" and r["seconds_per_epoch"]["n"]),
                None)
    if base:
        rate = base["train_flops_per_epoch"] / base["seconds_per_epoch"]["mean"]
        xs = [min(r["train_flops_per_epoch"] for r in rows) / 2, max(r["train_flops_per_epoch"] for r in rows) * 2]
        fig.add_scatter(x=xs, y=[x / rate for x in xs], mode="lines", line=dict(dash="dot", color="#888"),
                        name=f"LeNet-5 fast path's rate ({rate / 1e9:.1f} GFLOP/s)", hoverinfo="skip")
    fig.update_xaxes(title="training FLOPs per epoch (log scale)", type="log", dtick=1, exponentformat="power")
    fig.update_yaxes(title="seconds per epoch (log scale)", type="log", dtick=1)
    return _layout(fig, "A deeper network<br>time against arithmetic", height=420,
                   legend=dict(orientation="h", y=-0.25))


def frameworks_figure(table: list[dict]) -> go.Figure:
    """Chapter 10: seconds per epoch and test accuracy per framework and way (`frameworks.rows`), means with 95 %
    intervals, in one figure."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("seconds per epoch (CPU)", "accuracy, 20 epochs (%)"),
                        horizontal_spacing=0.28)
    labels = [row["label"] for row in table]
    for col, key in ((1, "seconds_per_epoch"), (2, "accuracy")):
        stats = [row[key] for row in table]
        hi = [(s["ci95_high"] - s["mean"]) if s["ci95_high"] is not None else 0 for s in stats]
        lo = [(s["mean"] - s["ci95_low"]) if s["ci95_low"] is not None else 0 for s in stats]
        fig.add_bar(x=[s["mean"] for s in stats], y=labels, orientation="h", showlegend=False,
                    text=[f"n = {row['n']}" for row in table], textposition="inside",
                    marker_color=["#1f77b4" if row["framework"] != "pytorch" else "#7f7f7f" for row in table],
                    error_x=dict(type="data", array=hi, arrayminus=lo, visible=True), row=1, col=col)
    if table:
        accs = [row["accuracy"] for row in table]
        low = min(s["ci95_low"] if s["ci95_low"] is not None else s["mean"] for s in accs)
        fig.update_xaxes(range=[low - 0.3, 100.0], row=1, col=2)
    return _layout(fig, "One experiment in each framework<br>on one CPU; bars: mean, lines: 95 % interval",
                   height=160 + 45 * max(len(table), 1), margin=dict(l=10, r=10, b=40))

