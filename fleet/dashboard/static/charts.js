/* Tiny inline-SVG line charts for the edgekit fleet dashboard (no library, nothing fetched).
 *
 * lineChart({title, unit, series: [{name, points: [{x: Date, y: number|null}]}], height})
 * returns an <figure> holding an <svg>; gaps (null y) break the line.
 */
"use strict";

(function (global) {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2"];

  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function niceTicks(min, max, count) {
    if (!isFinite(min) || !isFinite(max)) return [];
    if (min === max) { const d = Math.abs(min) || 1; min -= d / 2; max += d / 2; }
    const raw = (max - min) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
    return ticks;
  }

  function fmtTime(d, spanMs) {
    const pad = (n) => String(n).padStart(2, "0");
    if (spanMs > 2 * 86400e3) return `${d.getMonth() + 1}/${d.getDate()}`;
    return `${pad(d.getHours())}:${pad(d.getMinutes())}` + (spanMs < 600e3 ? `:${pad(d.getSeconds())}` : "");
  }

  function lineChart(opts) {
    const width = 640, height = opts.height || 220, m = { l: 52, r: 30, t: 12, b: 28 };
    const fig = document.createElement("figure");
    fig.className = "chart";
    const cap = document.createElement("figcaption");
    cap.textContent = opts.title + (opts.unit ? ` (${opts.unit})` : "");
    fig.appendChild(cap);

    const pts = opts.series.flatMap((s) => s.points.filter((p) => p.y !== null && p.y !== undefined && isFinite(p.y)));
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": opts.title,
      class: "chart-svg", "data-points": pts.length });
    fig.appendChild(svg);
    if (!pts.length) {
      svg.appendChild(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no data yet"));
      return fig;
    }
    const xs = pts.map((p) => p.x.getTime()), ys = pts.map((p) => p.y);
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (x0 === x1) { x0 -= 30e3; x1 += 30e3; }
    let y0 = Math.min(0, ...ys), y1 = Math.max(...ys);
    if (opts.yMax !== undefined) y1 = Math.max(y1, opts.yMax);
    if (y0 === y1) y1 = y0 + 1;
    const yt = niceTicks(y0, y1 * 1.05, 4);
    y1 = Math.max(y1, yt[yt.length - 1] || y1);
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
    const sy = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);

    for (const t of yt) {
      svg.appendChild(el("line", { x1: m.l, x2: width - m.r, y1: sy(t), y2: sy(t), class: "grid" }));
      svg.appendChild(el("text", { x: m.l - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, String(t)));
    }
    const span = x1 - x0;
    for (let i = 0; i <= 4; i++) {
      const x = x0 + (span * i) / 4;
      svg.appendChild(el("text", { x: sx(x), y: height - 8, "text-anchor": "middle", class: "tick" },
        fmtTime(new Date(x), span)));
    }
    svg.appendChild(el("line", { x1: m.l, x2: m.l, y1: m.t, y2: height - m.b, class: "axis" }));
    svg.appendChild(el("line", { x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b, class: "axis" }));

    const legend = document.createElement("div");
    legend.className = "legend";
    opts.series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      let d = "", pen = false;
      for (const p of s.points) {
        if (p.y === null || p.y === undefined || !isFinite(p.y)) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${sx(p.x.getTime()).toFixed(1)},${sy(p.y).toFixed(1)}`;
        pen = true;
      }
      if (d) svg.appendChild(el("path", { d, fill: "none", stroke: color, "stroke-width": 2, class: "line",
        "data-series": s.name }));
      const single = s.points.filter((p) => p.y !== null && p.y !== undefined && isFinite(p.y));
      if (single.length === 1) {
        svg.appendChild(el("circle", { cx: sx(single[0].x.getTime()), cy: sy(single[0].y), r: 3, fill: color }));
      }
      const item = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = color;
      item.append(sw, document.createTextNode(s.name));
      legend.appendChild(item);
    });
    fig.appendChild(legend);
    return fig;
  }

  global.EdgekitCharts = { lineChart };
})(window);
