"""hdr_lib.book.render: the plotly mime type for JupyterLab, a div + Plotly.newPlot on the book's plotly.js."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from hdr_lib.book import render


def figure():
    return go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout={"title": {"text": "a </script> title"}, "height": 300})


def test_lab_bundle_is_the_plotly_mime_type(monkeypatch):
    monkeypatch.delenv(render.BOOK_BUILD_ENV, raising=False)
    render.setup()
    bundle = pio.renderers[render.RENDERER].to_mimebundle(figure().to_dict())
    assert set(bundle) == {"application/vnd.plotly.v1+json", "text/plain"}
    config = bundle["application/vnd.plotly.v1+json"]["config"]
    assert config["displaylogo"] is False
    # "responsive" makes plotly size the figure to 100 % of JupyterLab's output area, which has no height: the
    # figure collapses to 0 px at the first slider step or legend click (tests/test_jupyterlab.py sees it happen).
    assert "responsive" not in config


def test_book_bundle_is_html_on_the_global_plotly_js(monkeypatch):
    monkeypatch.setenv(render.BOOK_BUILD_ENV, "1")
    render.setup()
    renderer = pio.renderers[render.RENDERER]
    bundle = renderer.to_mimebundle(figure().to_dict())
    assert set(bundle) == {"text/html", "text/plain"}  # nothing myst-nb cannot render
    html = bundle["text/html"]
    assert 'class="plotly-graph-div' in html and "Plotly.newPlot(" in html and "height:300px" in html
    assert "</script>" not in html.split("<script", 1)[1][:-len("</script>")]  # the title cannot end the script
    assert "plotly.js v" not in html and "cdn" not in html.lower()  # plotly.js is loaded once by the page
    # The id is the figure's place on the page (a count) and its content (a hash): the same figure shown twice
    # gets two ids (else the second div would never be drawn), and each build numbers the figures alike.
    first, again = html.split('"')[1], render.BookRenderer().to_html(figure().to_dict()).split('"')[1]
    assert first != again
    assert first.rsplit("-", 1)[1] == again.rsplit("-", 1)[1]
    assert int(again.split("-")[2]) == int(first.split("-")[2]) + 1
    monkeypatch.delenv(render.BOOK_BUILD_ENV)
    render.setup()
