// The book's plotly figures follow the page's light or dark theme. pydata-sphinx-theme sets data-theme="light" or
// "dark" on <html> (its toggle, or the reader's system preference under "auto"); the figures are drawn with a light
// template (hdr_lib.book.figures), so in dark mode each one is relaid out with a transparent background, light text
// and dim grid lines, and back to its own values in light mode. One place for every figure: no figure code changes.
(function () {
  "use strict";
  var DARK = {bg: "rgba(0,0,0,0)", text: "#ced6dd", grid: "#3a3f44", line: "#6c757d", legend: "rgba(0,0,0,0)"};

  function theme() {
    return document.documentElement.getAttribute("data-theme") === "dark" ? "dark" : "light";
  }

  function axes(gd) {
    return Object.keys(gd._fullLayout || {}).filter(function (k) { return /^[xy]axis\d*$/.test(k); });
  }

  // The layout keys this script sets, with the dark value of each.
  function darkUpdate(gd) {
    var update = {"paper_bgcolor": DARK.bg, "plot_bgcolor": DARK.bg, "font.color": DARK.text,
                  "title.font.color": DARK.text, "legend.bgcolor": DARK.legend, "legend.font.color": DARK.text};
    axes(gd).forEach(function (ax) {
      update[ax + ".gridcolor"] = DARK.grid;
      update[ax + ".zerolinecolor"] = DARK.line;
      update[ax + ".linecolor"] = DARK.line;
      update[ax + ".tickfont.color"] = DARK.text;
      update[ax + ".title.font.color"] = DARK.text;
    });
    (gd.layout.sliders || []).forEach(function (s, i) {
      update["sliders[" + i + "].font.color"] = DARK.text;
      update["sliders[" + i + "].currentvalue.font.color"] = DARK.text;
    });
    return update;
  }

  function get(obj, path) {  // "xaxis.title.font.color" or "sliders[0].font.color" in the figure's own layout
    return path.replace(/\[(\d+)\]/g, ".$1").split(".").reduce(function (o, k) {
      return o == null ? undefined : o[k];
    }, obj);
  }

  function apply(gd) {
    var want = theme();
    if (!gd._fullLayout || gd.getAttribute("data-hdr-theme") === want) return;
    var update = darkUpdate(gd);
    if (!gd._hdrLight) {  // the figure's own values, once, before any change (null: the template's default)
      gd._hdrLight = {};
      Object.keys(update).forEach(function (k) {
        var v = get(gd.layout, k);
        gd._hdrLight[k] = v === undefined ? null : v;
      });
    }
    gd.setAttribute("data-hdr-theme", want);
    window.Plotly.relayout(gd, want === "dark" ? update : gd._hdrLight);
  }

  function applyAll() {
    if (!window.Plotly) return;
    document.querySelectorAll(".plotly-graph-div").forEach(apply);
  }

  // The theme changes: <html data-theme>. A figure is drawn (later than the page load: render.py draws when
  // plotly.js is ready): a new .main-svg under the page. Both call applyAll; a figure already in the theme is left.
  new MutationObserver(applyAll).observe(document.documentElement, {attributes: true, attributeFilter: ["data-theme"]});
  var pending = false;
  new MutationObserver(function () {
    if (pending) return;
    pending = true;
    window.setTimeout(function () { pending = false; applyAll(); }, 50);
  }).observe(document.documentElement, {childList: true, subtree: true});
  document.addEventListener("DOMContentLoaded", applyAll);
  window.addEventListener("load", applyAll);
})();
