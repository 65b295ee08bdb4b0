// rift dashboard: draws charts (uPlot) from data-chart JSON, keeps ages current, shows whether
// live updates flow, and keeps the log panel bounded. Loaded as a file (the CSP allows no
// inline script); htmx swaps fresh server-rendered fragments in, and this runs on each.
(function () {
  "use strict";
  var plots = [];
  var MAX_LOG_LINES = 2000;

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function age(seconds) {
    if (seconds < 0) seconds = 0;
    if (seconds < 90) return Math.round(seconds) + "s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + "m ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + "h ago";
    return Math.round(seconds / 86400) + "d ago";
  }

  function updateAges(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time.age[datetime]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("datetime"));
      if (!isNaN(at)) t.textContent = age((now - at) / 1000);
    });
  }

  function drawChart(el) {
    if (el.dataset.drawn || typeof uPlot === "undefined") return;
    var spec;
    try { spec = JSON.parse(el.getAttribute("data-chart")); } catch (e) { return; }
    var colors = [cssVar("--c0"), cssVar("--c1"), cssVar("--c2"), cssVar("--c3")];
    var ink = cssVar("--muted"), grid = cssVar("--line");
    var series = [{}];
    var data = [spec.x];
    spec.series.forEach(function (s) {
      var color = colors[s.color] || colors[0];
      var opts = { label: s.label, stroke: color, width: 1.5, points: { show: false } };
      if (s.style === "area") opts.fill = color + "22";
      if (s.style === "dashed") opts.dash = [5, 4];
      if (s.style === "dots" || s.style === "points") {
        opts.points = { show: true, size: 7, fill: color, stroke: color };
      }
      if (s.style === "points") opts.paths = function () { return null; };
      series.push(opts);
      data.push(s.values);
    });
    var axis = { stroke: ink, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    var yRange = function (u, min, max) {
      // yMin and yMax are values the axis always shows (0 for counts, 0-1 for win rates).
      var lo = spec.yMin != null ? Math.min(spec.yMin, min) : min;
      var hi = spec.yMax != null ? Math.max(spec.yMax, max) : max;
      if (lo === hi) { hi = lo + 1; }
      return [lo, hi];
    };
    var x0 = Math.min.apply(null, spec.x), x1 = Math.max.apply(null, spec.x);
    var xScale = x0 === x1 ? { time: true, auto: false, range: [x0 - 60, x1 + 60] } : { time: true };
    var plot = new uPlot({
      width: Math.max(el.clientWidth, 200),
      height: 190,
      series: series,
      // One point (a first promotion, a fresh dashboard) has no width: give it a minute
      // either side, or uPlot has no scale to draw on.
      scales: { x: xScale, y: { range: yRange } },
      axes: [axis, Object.assign({}, axis, { size: 48 })],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } }
    }, data, el);
    el.dataset.drawn = "1";
    plots.push({ el: el, plot: plot });
  }

  function drawCharts(root) {
    plots = plots.filter(function (p) {
      if (document.body.contains(p.el)) return true;
      p.plot.destroy();
      return false;
    });
    (root || document).querySelectorAll(".chart[data-chart]").forEach(drawChart);
  }

  function setConn(state, text) {
    var c = document.getElementById("conn");
    if (!c) return;
    c.className = "conn " + state;
    c.textContent = text;
  }

  function trimLog(log) {
    var text = log.textContent;
    var lines = text.split("\n");
    if (lines.length > MAX_LOG_LINES + 200) {
      log.textContent = lines.slice(-MAX_LOG_LINES).join("\n");
    }
  }

  function init() {
    if (typeof htmx === "undefined") return;
    htmx.onLoad(function (root) {
      drawCharts(root);
      updateAges(root);
    });
    document.body.addEventListener("htmx:sseOpen", function (e) {
      var elt = e.detail && e.detail.elt;
      if (elt && elt.id === "live") setConn("", "live");
      var log = elt && elt.querySelector && elt.querySelector("#log");
      if (log) log.textContent = "";
    });
    document.body.addEventListener("htmx:sseError", function (e) {
      var elt = e.detail && e.detail.elt;
      if (elt && elt.id === "live") setConn("down", "reconnecting");
    });
    var followLog = function (e) {
      var t = e.detail && (e.detail.target || e.detail.elt);
      if (t && t.id === "log") {
        var atEnd = t.scrollHeight - t.scrollTop - t.clientHeight < 80;
        trimLog(t);
        if (atEnd) t.scrollTop = t.scrollHeight;
      }
    };
    document.body.addEventListener("htmx:afterSwap", followLog);
    document.body.addEventListener("htmx:sseMessage", function (e) {
      followLog(e);
      drawCharts(document);
      updateAges(document);
    });
    var live = document.getElementById("live");
    if (live && !live.hasAttribute("sse-connect")) setConn("", "static");
    else setConn("connecting", "connecting");
    setInterval(function () { updateAges(document); }, 1000);
    var resizing;
    window.addEventListener("resize", function () {
      clearTimeout(resizing);
      resizing = setTimeout(function () {
        plots.forEach(function (p) {
          p.plot.setSize({ width: Math.max(p.el.clientWidth, 200), height: 190 });
        });
      }, 150);
    });
  }

  // A page left for another keeps its event streams open while the browser holds it for
  // "back" (the back/forward cache), and a browser opens at most six connections to one host:
  // close them on leaving, and load the page afresh if it is shown again.
  window.addEventListener("pagehide", function () {
    document.querySelectorAll("[sse-connect]").forEach(function (el) {
      var data = el["htmx-internal-data"];
      if (data && data.sseEventSource) data.sseEventSource.close();
    });
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted) location.reload();
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
