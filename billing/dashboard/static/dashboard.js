/* The dashboard's script: tiny SVG charts (no library) and live refresh by polling.
 *
 * Figures arrive already formatted by the server (the same code renders the first page), so
 * this file only places them. Numbers are parsed here for chart geometry alone; money is never
 * computed in the browser. Everything is built with DOM calls and textContent (no innerHTML),
 * and the page works without this script: it only draws charts and keeps figures fresh.
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";

  function svg(name, attrs, parent) {
    var node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function html(name, attrs, text, parent) {
    var node = document.createElement(name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function num(value) {
    var n = Number(value);
    return isFinite(n) ? n : 0;
  }

  /* 0, 2.5k, 1.2M: axis labels only. */
  function compact(n) {
    var abs = Math.abs(n);
    if (abs >= 1e9) { return trim(n / 1e9) + "G"; }
    if (abs >= 1e6) { return trim(n / 1e6) + "M"; }
    if (abs >= 1e3) { return trim(n / 1e3) + "k"; }
    if (abs >= 1 || n === 0) { return trim(n); }
    return String(Number(n.toPrecision(2)));
  }

  function trim(n) { return String(Math.round(n * 10) / 10); }

  /* A "nice" axis: a step of 1, 2 or 5 times a power of ten, about `count` steps to max. */
  function niceScale(max, count) {
    if (!(max > 0)) { return { max: 1, step: 0.25 }; }
    var raw = max / count;
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 2.5, 5, 10].map(function (m) { return m * power; })
      .filter(function (s) { return s >= raw; })[0];
    return { max: Math.ceil(max / step) * step, step: step };
  }

  /* Charts are drawn at the container's own width (and again when it changes), so their text
     stays at its real size on a phone and on a wide screen alike. */
  var W = 480, H = 200, PAD = { left: 44, right: 10, top: 10, bottom: 26 };

  function frame(container, summary) {
    W = Math.max(240, Math.round(container.clientWidth || 480));
    H = Math.round(Math.min(240, Math.max(170, W * 0.5)));
    container.textContent = "";
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
                            preserveAspectRatio: "xMidYMid meet", focusable: "false" }, container);
    svg("title", {}, root).textContent = summary;
    return root;
  }

  function yAxis(root, scale) {
    var grid = svg("g", { "class": "grid" }, root);
    var axis = svg("g", { "class": "axis", "aria-hidden": "true" }, root);
    var plotH = H - PAD.top - PAD.bottom;
    for (var v = 0; v <= scale.max + scale.step / 2; v += scale.step) {
      var y = PAD.top + plotH - (v / scale.max) * plotH;
      svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }, grid);
      var t = svg("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, axis);
      t.textContent = compact(v);
    }
    svg("line", { "class": "baseline", x1: PAD.left, x2: W - PAD.right,
                  y1: H - PAD.bottom, y2: H - PAD.bottom }, root);
    return axis;
  }

  function noData(root, text) {
    var t = svg("text", { "class": "nodata", x: W / 2, y: H / 2, "text-anchor": "middle" }, root);
    t.textContent = text;
  }

  /* Bars of one usage series. points: [{label, <key>: "decimal", <textKey>: "shown"}]. */
  function barChart(container, points, key, textKey, color, caption) {
    var values = points.map(function (p) { return num(p[key]); });
    var max = Math.max.apply(null, values.concat([0]));
    var peak = values.indexOf(max);
    var summary = caption + ": " + points.length + " bars" +
      (max > 0 ? "; highest " + points[peak][textKey] + " (" + points[peak].label + ")" : "; no usage");
    var root = frame(container, summary);
    var scale = niceScale(max, 4);
    var axis = yAxis(root, scale);
    if (max <= 0) { noData(root, "No usage in this range"); }
    var plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
    var slot = plotW / Math.max(points.length, 1);
    var gap = Math.min(slot * 0.2, 4);
    var every = Math.max(1, Math.ceil(points.length / Math.max(2, Math.floor(plotW / 48))));
    points.forEach(function (p, i) {
      var h = (values[i] / scale.max) * plotH;
      var x = PAD.left + i * slot + gap / 2;
      var bar = svg("rect", { "class": "bar " + color, x: x.toFixed(2),
                              y: (PAD.top + plotH - h).toFixed(2),
                              width: Math.max(slot - gap, 1).toFixed(2),
                              height: Math.max(h, values[i] > 0 ? 1 : 0).toFixed(2) }, root);
      svg("title", {}, bar).textContent = p.label + ": " + p[textKey];
      if (i % every === 0) {
        var t = svg("text", { x: (x + (slot - gap) / 2).toFixed(2), y: H - 8,
                              "text-anchor": "middle" }, axis);
        t.textContent = p.label;
      }
    });
    container.setAttribute("data-drawn", String(points.length));
    container.setAttribute("data-max", String(max));
  }

  function pad2(n) { return String(n).padStart(2, "0"); }

  function clock(ms) {
    var d = new Date(ms);
    return pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes());
  }

  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function dayClock(ms) {
    var d = new Date(ms);
    return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate() + " " + clock(ms);
  }

  /* Time-axis ticks on whole minutes: a step of 1, 2, 5, 10, 15 or 30 minutes or whole hours,
     the smallest that leaves room for every label. A per-minute point therefore sits exactly
     over its minute's label, and no label is written twice (a second day's same time names
     its day). */
  var TICK_MINUTES = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];

  function timeTicks(start, end, room) {
    var minutes = (end - start) / 60000;
    var step = TICK_MINUTES.filter(function (m) { return minutes / m + 1 <= room; })[0] || 1440;
    var stepMs = step * 60000;
    var ticks = [], seen = {};
    for (var t = Math.ceil(start / stepMs) * stepMs; t <= end; t += stepMs) {
      var label = clock(t);
      if (seen[label]) { label = dayClock(t); }
      if (!seen[label]) { seen[label] = true; ticks.push({ t: t, label: label }); }
    }
    return ticks;
  }

  /* Lines over time. series: [{name, cls, points: [[ms, value|null], ...], steps}]. In a
     sampled series a gap of more than 90 s breaks the line, so a paused sandbox does not look
     busy; a `steps` series (what was allocated) holds its value until the next point and
     breaks only at a null. */
  function lineChart(container, series, start, end, floorMax, caption) {
    var all = [];
    series.forEach(function (s) { s.points.forEach(function (p) { if (p[1] !== null) { all.push(p[1]); } }); });
    var max = Math.max.apply(null, all.concat([floorMax || 0]));
    var root = frame(container, caption + ": " + series.map(function (s) {
      var vals = s.points.filter(function (p) { return p[1] !== null; }).map(function (p) { return p[1]; });
      return s.name + (vals.length ? " up to " + compact(Math.max.apply(null, vals)) : " none");
    }).join("; "));
    var scale = niceScale(max, 4);
    var axis = yAxis(root, scale);
    var plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
    var span = Math.max(end - start, 60000);
    function x(ms) { return PAD.left + ((Math.min(Math.max(ms, start), start + span) - start) / span) * plotW; }
    function y(v) { return PAD.top + plotH - (v / scale.max) * plotH; }
    var labels = [];
    timeTicks(start, start + span, Math.max(2, Math.floor(plotW / 52))).forEach(function (tick, i, ticks) {
      var tx = x(tick.t);
      var anchor = tx - PAD.left < 20 ? "start" : W - PAD.right - tx < 20 ? "end" : "middle";
      var t = svg("text", { x: tx.toFixed(1), y: H - 8, "text-anchor": anchor }, axis);
      t.textContent = tick.label;
      labels.push(tick.label);
      if (i > 0 && i < ticks.length) {
        svg("line", { "class": "tick", x1: tx.toFixed(1), x2: tx.toFixed(1), y1: H - PAD.bottom,
                      y2: H - PAD.bottom + 4 }, root);
      }
    });
    container.setAttribute("data-labels", labels.join("|"));
    var drawn = 0;
    series.forEach(function (s) {
      var d = "", last = null;
      s.points.forEach(function (p) {
        if (p[1] === null) { last = null; return; }
        if (s.steps && last !== null) {
          d += "L" + x(p[0]).toFixed(1) + " " + y(last[1]).toFixed(1) + " ";
        }
        var cmd = last === null || (!s.steps && p[0] - last[0] > 90000) ? "M" : "L";
        d += cmd + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1) + " ";
        last = p;
        if (!s.steps) { drawn += 1; }
      });
      if (d) { svg("path", { "class": "line " + s.cls, d: d.trim() }, root); }
      if (!s.steps) {
        /* A minute on its own (the first minute of a sandbox, or one between gaps) has no
           line to be part of: it is drawn as a dot, and so is every point of a short run. */
        var values = s.points.filter(function (p) { return p[1] !== null; });
        values.forEach(function (p, i) {
          var prev = values[i - 1], next = values[i + 1];
          var alone = (!prev || p[0] - prev[0] > 90000) && (!next || next[0] - p[0] > 90000);
          if (alone || values.length <= 30) {
            svg("circle", { "class": "dot " + s.cls, cx: x(p[0]).toFixed(1),
                            cy: y(p[1]).toFixed(1), r: alone ? 3 : 2 }, root);
          }
        });
      }
    });
    container.setAttribute("data-drawn", String(drawn));
    var legend = container.parentNode.querySelector(".legend");
    if (!legend) {
      legend = html("ul", { "class": "legend", "aria-hidden": "true" }, null, container.parentNode);
      series.forEach(function (s) {
        var li = html("li", {}, null, legend);
        html("span", { "class": "swatch " + s.cls }, null, li);
        li.appendChild(document.createTextNode(s.name));
      });
    }
  }

  /* A half-circle gauge of the credit left. */
  function gauge(node, fraction) {
    var f = Math.max(0, Math.min(1, num(fraction)));
    node.textContent = "";
    var root = svg("svg", { viewBox: "0 0 120 66", "aria-hidden": "true", focusable: "false" }, node);
    var arc = "M 10 60 A 50 50 0 0 1 110 60";
    var length = Math.PI * 50;
    svg("path", { "class": "track", d: arc, fill: "none", "stroke-width": 12,
                  "stroke-linecap": "round" }, root);
    if (f > 0) {
      svg("path", { "class": "value" + (f < 0.2 ? " low" : ""), d: arc, fill: "none",
                    "stroke-width": 12, "stroke-linecap": "round",
                    "stroke-dasharray": (length * f).toFixed(2) + " " + length.toFixed(2) }, root);
    }
    node.setAttribute("data-fraction", String(f));
  }

  /* --- pages ------------------------------------------------------------------------------ */

  function pageData() {
    var node = document.getElementById("page-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function setField(name, text) {
    document.querySelectorAll('[data-field="' + name + '"]').forEach(function (n) {
      if (n.textContent !== text) { n.textContent = text; }
    });
  }

  function cell(row, text, cls) { return html("td", cls ? { "class": cls } : {}, text, row); }

  /* On a narrow screen a row of a records table is a card; each cell shows its column's
     name (its data-label) before its value. Rows drawn here get the labels of the header. */
  function labelCells(tbody) {
    var table = tbody.closest("table");
    if (!table) { return; }
    var names = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
      return th.textContent.trim();
    });
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      Array.prototype.forEach.call(tr.cells, function (td, i) {
        if (names[i] && !td.hasAttribute("data-label")) { td.setAttribute("data-label", names[i]); }
      });
    });
  }

  function executionRow(r, showState) {
    var tr = html("tr", { "data-key": r.execution_id });
    var first = html("td", {}, null, tr);
    html("a", { href: r.href, "class": "mono" }, r.sandbox_id, first);
    cell(tr, r.template);
    if (showState) {
      html("span", { "class": "pill pill-" + r.state }, r.state, html("td", {}, null, tr));
    }
    cell(tr, r.vcpu, "num");
    cell(tr, r.memory, "num");
    html("time", { datetime: r.started_at }, r.started, html("td", {}, null, tr));
    cell(tr, r.duration, "num");
    if (showState) { cell(tr, r.end); }
    cell(tr, r.vcpu_seconds, "num");
    cell(tr, r.gib_seconds, "num");
    cell(tr, r.cost, "num amount");
    return tr;
  }

  /* Refresh a table of executions in place: a row that is still there keeps its nodes, and
     only a cell whose content changed is rewritten, so a link, a selection or the focus is
     never pulled from under the reader by a refresh. */
  function executionRows(tbody, rows, showState) {
    var kept = {};
    Array.prototype.forEach.call(tbody.rows, function (tr) {
      var key = tr.getAttribute("data-key");
      if (key) { kept[key] = tr; }
    });
    rows.forEach(function (r, i) {
      var fresh = executionRow(r, showState);
      var row = kept[r.execution_id];
      if (row && row.cells.length === fresh.cells.length) {
        delete kept[r.execution_id];
        Array.prototype.forEach.call(fresh.cells, function (td, j) {
          var old = row.cells[j];
          if (old.innerHTML !== td.innerHTML) {
            old.className = td.className;
            old.replaceChildren.apply(old, Array.prototype.slice.call(td.childNodes));
          }
        });
      } else {
        row = fresh;
      }
      if (tbody.rows[i] !== row) { tbody.insertBefore(row, tbody.rows[i] || null); }
    });
    Object.keys(kept).forEach(function (key) { kept[key].remove(); });
    while (tbody.rows.length > rows.length) { tbody.deleteRow(rows.length); }
    labelCells(tbody);
  }

  function drawUsage(chart) {
    document.querySelectorAll('[data-chart="usage"]').forEach(function (node) {
      var caption = document.getElementById(node.getAttribute("aria-labelledby"));
      barChart(node, chart.points, node.getAttribute("data-series"), node.getAttribute("data-text"),
               node.getAttribute("data-color"), caption ? caption.textContent : "Usage");
    });
  }

  function renderOverview(view) {
    var b = view.balance;
    setField("as_of", view.as_of);
    Object.keys(b.figures).forEach(function (k) { setField(k, b.figures[k]); });
    setField("total_vcpu", view.chart.totals.vcpu);
    setField("total_gib", view.chart.totals.gib);
    setField("total_cost", view.chart.totals.cost);
    setField("running_count", view.running.length + (view.running_more ? "+" : ""));
    var g = document.getElementById("credit-gauge");
    if (g && b.gauge.fraction !== null) {
      gauge(g, b.gauge.fraction);
      g.setAttribute("aria-valuenow", b.gauge.now);
      g.setAttribute("aria-valuemax", b.gauge.max);
      g.setAttribute("aria-valuetext", b.gauge.text);
    }
    var c = view.commitment, progress = document.getElementById("commitment-progress");
    if (c && progress) {
      progress.value = c.fraction;
      progress.setAttribute("aria-valuetext", c.text);
      setField("commitment_percent", c.percent);
      setField("commitment_spend", c.spend);
    }
    drawUsage(view.chart);
    var usage = document.querySelector("#usage-table tbody");
    if (usage) {
      usage.textContent = "";
      view.chart.points.forEach(function (p) {
        var tr = html("tr", {}, null, usage);
        html("th", { scope: "row" }, p.label, tr);
        cell(tr, p.vcpu_text, "num");
        cell(tr, p.gib_text, "num");
        cell(tr, p.cost_text, "num");
      });
    }
    var table = document.querySelector("#running-table tbody");
    if (table) { executionRows(table, view.running, false); }
    var block = document.getElementById("running-block");
    var empty = document.getElementById("running-empty");
    if (block && empty) {
      block.hidden = view.running.length === 0;
      empty.hidden = view.running.length !== 0;
    }
  }

  function metricSeries(points, avgKey, maxKey) {
    function pick(k) {
      return points.map(function (p) {
        return [Date.parse(p.t), p[k] === null || p[k] === undefined ? null : num(p[k])];
      });
    }
    return [{ name: "average", cls: "avg", points: pick(avgKey) },
            { name: "maximum", cls: "max", points: pick(maxKey) }];
  }

  /* What the sandbox had allocated, as a step series: each execution from its start to its
     end, a break between executions. `value` picks the figure (vCPU as 100 %, or MiB). */
  function allocationSeries(allocation, value) {
    var points = [];
    allocation.forEach(function (a) {
      var v = value(a);
      if (v === null) { return; }
      points.push([Date.parse(a.start), v], [Date.parse(a.end), v], [Date.parse(a.end), null]);
    });
    return points;
  }

  function renderSandbox(view) {
    var m = view.metrics;
    var start = Date.parse(m.start), end = Date.parse(m.end);
    var charts = document.getElementById("metrics-charts");
    if (charts) { charts.hidden = m.points.length === 0; }
    document.querySelectorAll('[data-chart="metrics"]').forEach(function (node) {
      if (m.points.length === 0) { return; }
      var kind = node.getAttribute("data-kind");
      var caption = document.getElementById(node.getAttribute("aria-labelledby"));
      var series = kind === "cpu" ? metricSeries(m.points, "cpu_avg", "cpu_max")
                                  : metricSeries(m.points, "mem_avg", "mem_max");
      var allocated = allocationSeries(view.allocation || [], kind === "cpu"
        ? function (a) { return a.vcpu === null ? null : 100; }
        : function (a) { return a.memory_mib === null ? null : num(a.memory_mib); });
      if (allocated.length) {
        series.push({ name: "allocated", cls: "alloc", steps: true, points: allocated });
      }
      lineChart(node, series, start, end, kind === "cpu" ? 100 : 0,
                caption ? caption.textContent : kind);
    });
    var empty = document.getElementById("metrics-empty");
    if (empty) { empty.hidden = m.points.length !== 0; }
    setField("total_cost", view.totals.cost);
    setField("total_vcpu", view.totals.vcpu);
    setField("total_gib", view.totals.gib);
    setField("state", view.running ? "running" : "ended");
    var runs = document.querySelector("#sandbox-executions tbody");
    if (runs) { executionRows(runs, view.executions, true); }
    var table = document.querySelector("#metrics-table tbody");
    if (table) {
      table.textContent = "";
      m.points.forEach(function (p) {
        var tr = html("tr", {}, null, table);
        html("th", { scope: "row" }, p.label, tr);
        cell(tr, p.samples, "num");
        [p.cpu_avg, p.cpu_max, p.mem_avg, p.mem_max].forEach(function (v) {
          cell(tr, v === null ? "—" : v, "num");
        });
      });
    }
  }

  /* Poll the page's live URL; pause while the tab is hidden; back off after failures. */
  function poll(url, every, render, keepGoing) {
    var status = document.getElementById("live-status");
    var failures = 0, timer = null;
    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(tick, Math.min(every * Math.pow(2, failures), 60000));
    }
    function tick() {
      if (document.hidden) { return; }
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 401) {
            var here = location.pathname + location.search;
            location.assign("/dashboard/sign-in?next=" + encodeURIComponent(here));
            return null;
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (view) {
          if (view === null) { return; }
          failures = 0;
          if (status) { status.textContent = ""; }
          render(view);
          document.body.setAttribute("data-refreshed", String(Date.now()));
          if (!keepGoing || keepGoing(view)) { schedule(); }
        })
        .catch(function () {
          failures = Math.min(failures + 1, 4);
          if (status) { status.textContent = "Could not refresh; trying again."; }
          schedule();
        });
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { tick(); }
    });
    schedule();
  }

  /* Redraw the newest view when the layout width changes (rotation, resize). */
  function onResize(redraw) {
    var width = window.innerWidth, timer = null;
    window.addEventListener("resize", function () {
      if (window.innerWidth === width) { return; }
      width = window.innerWidth;
      clearTimeout(timer);
      timer = setTimeout(redraw, 150);
    });
  }

  function start() {
    var page = document.body.getAttribute("data-page");
    var every = num(document.body.getAttribute("data-poll-ms")) || 5000;
    var live = document.body.getAttribute("data-live-url");
    var view = pageData();
    var render = page === "overview" ? renderOverview : page === "sandbox" ? renderSandbox : null;
    if (render && view) {
      var latest = view;
      var keep = function (v) { latest = v; render(v); };
      keep(view);
      onResize(function () { render(latest); });
      if (live && (page === "overview" || view.running)) {
        poll(live, every, keep, page === "sandbox" ? function (v) { return v.running; } : null);
      }
    }
    document.body.setAttribute("data-ready", "1");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
