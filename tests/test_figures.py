"""The figure functions on real MNIST and a real (short) training record: the traces, sliders and labels."""


import re

import pytest
import torch

from hdr_lib import paper
from hdr_lib.book import figures
from hdr_lib.measure import flops
from hdr_lib.config import PAPER
from hdr_lib.data import load_mnist, to_float


@pytest.fixture(scope="module")
def data(data_root):
    return load_mnist(data_root, download=False)


@pytest.fixture(scope="module")
def run(data):
    from hdr_lib.train import train_model

    # Two real epochs of ten big batches each: seconds on a CPU, and a record with the real schema.
    return train_model(PAPER.replace(device="cpu", epochs=2, batch_size=6000), data=data, progress=False)


def test_digit_grid_titles_each_digit_with_its_label(data):
    fig = figures.digit_grid(data.train_images, data.train_labels, n=20)
    assert len(fig.data) == 20
    titles = sorted(a.text for a in fig.layout.annotations)
    assert titles == sorted(f"label {int(y)}" for y in data.train_labels[:20])


def test_class_balance_counts_every_image(data):
    fig = figures.class_balance(data.train_labels, data.test_labels)
    assert [sum(t.y) for t in fig.data] == [60000, 10000]


def test_pixel_histogram_has_256_levels(data):
    fig = figures.pixel_histogram(data.test_images)
    assert len(fig.data[0].x) == 256 and sum(fig.data[0].y) == 10000 * 28 * 28


def test_epoch_curves_slider_replays_every_epoch(run):
    record, _ = run
    fig = figures.epoch_curves({"a": record, "b": record})
    assert len(fig.data) == 4  # two metrics x two runs
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["1", "2"]
    first = steps[0].args[0]
    assert all(len(x) == 1 for x in first["x"]) and all(len(x) == 2 for x in steps[1].args[0]["x"])
    assert list(fig.data[2].y) == [e["test_accuracy"] for e in record["epochs"]]


def test_accuracy_ci_error_bars_from_several_runs():
    fig = figures.accuracy_ci({"ours CPU": [98.9, 99.0, 98.95]}, figures.PAPER_ACCURACY)
    mean = next(t for t in fig.data if "mean" in t.name)
    assert mean.error_y.visible and mean.error_y.array[0] > 0
    claimed = {t.name: t.y[0] for t in fig.data if t.name.startswith("paper")}
    assert claimed == {"paper (claimed) CPU": paper.CPU_ACCURACY, "paper (claimed) GPU": paper.GPU_ACCURACY}


def test_misclassified_slider_steps_through_wrong_digits(run, data):
    _, model = run
    from hdr_lib.train import predict_proba

    probs = predict_proba(model, to_float(data.test_images))
    fig = figures.misclassified(data.test_images, data.test_labels, probs, limit=25)
    wrong = int((probs.argmax(1) != data.test_labels).sum())
    assert wrong > 0 and len(fig.layout.sliders[0].steps) == min(25, wrong)
    assert [t.type for t in fig.data] == ["heatmap", "bar"]
    assert abs(sum(fig.data[1].y) - 1) < 1e-4


def test_probability_bars_marks_the_true_digit():
    fig = figures.probability_bars(torch.full((10,), 0.1), true_label=3)
    colours = list(fig.data[0].marker.color)
    assert colours[3] != colours[0] and len(set(colours)) == 2


def test_memory_bars_say_not_yet_measured_beside_the_papers_memory():
    fig = figures.memory_bars({**flops.memory_estimate(), "ours: CUDA reserved": None})
    assert any(a.text == "not yet measured" for a in fig.layout.annotations)
    bars = dict(zip(fig.data[0].y, fig.data[0].x))
    assert [v for k, v in bars.items() if k.startswith("paper")] == [paper.GPU_MEMORY_GB * 1e9]


def test_step_time_split_puts_the_largest_kind_on_top_and_names_its_operators():
    profile = {"ms_per_step": 3.0, "steps": 20, "path": "fast", "device": "cpu",
               "kinds": {"convolutions": 2.0, "between operators": 0.6, "pooling": 0.4},
               "ops": {"convolutions": {"aten::mkldnn_convolution": 1.2, "aten::convolution_backward": 0.8},
                       "pooling": {"aten::max_pool2d_with_indices": 0.4}}}
    bar = figures.step_time_split(profile).data[0]
    assert list(bar.y) == ["pooling", "between operators", "convolutions"]  # plotly draws the first at the bottom
    assert list(bar.x) == [0.4, 0.6, 2.0]
    assert bar.text[-1] == "2.00 ms (67 %)"
    assert bar.customdata[-1].startswith("aten::mkldnn_convolution: 1.200 ms<br>aten::convolution_backward")
    assert bar.customdata[1] == "time no operator accounts for"


def test_time_figure_draws_the_papers_times_and_labels_what_is_not_measured():
    from hdr_lib.book import scorecard
    from tests.test_scorecard import make_record

    rows = scorecard.scorecard([make_record("cpu", seconds=120.0)])
    fig = figures.time_figure(rows)
    assert list(fig.data[0].y) == [paper.CPU_SECONDS, paper.GPU_SECONDS]  # the paper's bars, from hdr_lib.paper
    assert fig.data[1].y[1] is None  # GPU bar absent, not zero
    labels = [a.text for a in fig.layout.annotations]
    assert len(labels) == 3 and all("measured" in t for t in labels)  # GPU x 2 paths, CPU fast: labelled
    live = make_record("cpu", seconds=33.0, path="fast")
    with_live = figures.time_figure(rows, live=live)
    assert with_live.data[-1].y == (33.0, None) and "live run" in with_live.data[-1].name

    assert fig.layout.yaxis.dtick == 1  # one label a decade on the log axis, no 2s and 5s between


def test_claims_figure_draws_the_papers_claims_and_frames_what_is_not_measured():
    from hdr_lib.book import scorecard
    from tests.test_scorecard import make_record

    runs = [make_record("cpu", seconds=s, accuracy=a, seed=i) for i, (s, a) in enumerate(((120.0, 99.0), (130.0, 99.2)))]
    fig = figures.claims_figure(scorecard.scorecard(runs))
    paper_bars = [t.y[0] for t in fig.data if t.x == ("paper",)]
    assert paper_bars == [paper.SPEEDUP, paper.CPU_ACCURACY, paper.CPU_SECONDS]
    ours = [t.y[0] for t in fig.data if t.x == ("ours",)]
    assert ours[0] is None and ours[1:] == [pytest.approx(99.1), pytest.approx(125.0)]  # no GPU run: no speedup bar
    framed = [a.text for a in fig.layout.annotations if "measured" in a.text]
    assert framed == ["not<br>yet measured"]  # where our speedup bar would stand, once


def test_chapter_11_figures_draw_the_measured_groups_and_name_the_missing_ones():
    from hdr_lib.measure import futurework as fw

    precision = figures.precision_figure(fw.precision_rows())  # the committed records: CPU only
    assert {t.x[0] for t in precision.data} == {"CPU float32", "CPU bfloat16"}
    assert "GPU float32, GPU bfloat16, GPU float16:<br>not yet measured" in precision.layout.title.subtitle.text
    ddp = figures.ddp_figure(fw.ddp_rows())
    assert [t.name for t in ddp.data] == ["computing", "all-reduce"] and len(ddp.data[0].y) == len(fw.ddp_rows())
    assert "session" in ddp.data[0].y[0] and "cpu-" not in " ".join(ddp.data[0].y)  # numbered, not session ids
    network = figures.network_figure(fw.network_rows())
    names = [t.name for t in network.data]
    assert "ResNet, fast path, CPU" in names and any(n.startswith("LeNet-5 fast path's rate") for n in names)


# What the title's line holds beside plotly's toolbar on a 390 px phone (the figure about 358 px wide, the title
# indented 18 px): about 36 characters at the title's 17 px (a subtitle's lines: figures.SUBTITLE_CHARS).
TITLE_CHARS = 36


def assert_title_clear_of_toolbar(fig):
    """The title starts below plotly's toolbar band at the container's top, every line of it is short enough for a
    phone, and the top margin holds it all. A title of several lines in title.text would be drawn from its first
    baseline, not its top, and run up under the toolbar: lines after the first belong to the subtitle."""
    title = fig.layout.title
    assert "<br>" not in (title.text or ""), title.text
    assert (title.yref, title.y, title.yanchor) == ("container", 1, "top")
    assert title.pad.t >= figures.TOOLBAR_PX >= 30  # the toolbar is 26 px high in the book's theme
    subtitle = [line for line in (title.subtitle.text or "").split("<br>") if line]
    visible = lambda line: re.sub(r"<[^>]+>", "", line)  # noqa: E731
    assert len(visible(title.text or "")) <= TITLE_CHARS, title.text
    assert all(len(visible(line)) <= figures.SUBTITLE_CHARS for line in subtitle), subtitle
    needed = title.pad.t + figures.TITLE_LINE_PX * bool(title.text) + figures.SUBTITLE_LINE_PX * len(subtitle)
    assert fig.layout.margin.t >= needed + 20  # and room between the title and the plot


def test_every_figures_title_is_clear_of_the_toolbar_on_a_phone(data, run):
    from hdr_lib.book import scorecard
    from hdr_lib.measure import frameworks, futurework as fw
    from tests.test_scorecard import make_record

    record, _ = run
    rows = scorecard.scorecard([make_record("cpu", seconds=120.0), make_record("cpu", seconds=130.0, seed=1)])
    profile = {"ms_per_step": 182.84, "steps": 20, "path": "reference", "device": "cpu", "kinds": {"pooling": 0.4},
               "ops": {}}
    probs = torch.softmax(torch.randn(50, 10, generator=torch.Generator().manual_seed(0)), 1)
    built = [figures.claims_figure(rows),  # the landing page's chart, where the defect was seen
             figures.digit_grid(data.train_images, data.train_labels, n=20),
             figures.class_balance(data.train_labels, data.test_labels), figures.pixel_histogram(data.test_images),
             figures.epoch_curves({"a": record}),
             figures.accuracy_ci({"ours CPU": [98.9, 99.0]}, figures.PAPER_ACCURACY),
             figures.misclassified(data.test_images[:50], data.test_labels[:50], probs),
             figures.probability_bars(probs[0], true_label=3),
             figures.digit_image(data.test_images[0], "test image 0<br>true 7, predicted 7 (p = 1.000)"),
             figures.bench_bars([{"device": "cpu", "path": p, "seconds": [2.0, 2.2]} for p in ("reference", "fast")]),
             figures.step_time_split(profile), figures.lr_schedule([1, 2], [0.01, 0.001]),
             figures.memory_bars({**flops.memory_estimate(), "ours: CUDA reserved": None}), figures.time_figure(rows),
             figures.precision_figure(fw.precision_rows()),
             figures.ddp_figure(fw.ddp_rows()), figures.network_figure(fw.network_rows()),
             figures.frameworks_figure(frameworks.rows())]
    built.append(figures.step_time_split(profile, title="A step<br>" + "a machine with a long name, " * 4))
    for fig in built:
        assert_title_clear_of_toolbar(fig)
        titles = [step.args[1]["title.text"] for slider in fig.layout.sliders for step in slider.steps
                  if len(step.args) > 1]  # the titles a slider sets (misclassified: one per digit)
        assert all("<br>" not in t and len(t) <= TITLE_CHARS for t in titles), titles
