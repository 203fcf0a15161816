/* edgekit fleet dashboard: a small vanilla-JS single-page app over the fleet API (/api/v1).
 *
 * Views (hash routes): #/overview, #/devices, #/device/ID, #/rollouts, #/rollout/ID, #/bundles, #/audit.
 * The API token lives in localStorage ("edgekit.token"); every request sends it as a Bearer token.
 * All data is inserted with textContent / DOM nodes, never as HTML (device-supplied strings are untrusted).
 */
"use strict";

(function () {
  const TOKEN_KEY = "edgekit.token";
  const REFRESH_KEY = "edgekit.autorefresh";
  const app = document.getElementById("app");
  const statusLine = document.getElementById("status");
  let me = null;            // {name, scope} of the token in use
  let refreshTimer = null;
  let renderSeq = 0;        // drop renders that a newer navigation superseded

  // ---- DOM helpers ------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const link = (href, text, attrs) => h("a", Object.assign({ href }, attrs || {}), text);
  const badge = (text, kind) => h("span", { class: `badge ${kind || text}` }, text);

  function ago(iso) {
    if (!iso) return h("span", { class: "muted" }, "never");
    const d = new Date(iso), s = Math.round((Date.now() - d.getTime()) / 1000);
    const txt = s < 0 ? "just now" : s < 60 ? `${s}s ago` : s < 3600 ? `${Math.floor(s / 60)}m ago`
      : s < 86400 ? `${Math.floor(s / 3600)}h ago` : `${Math.floor(s / 86400)}d ago`;
    return h("time", { datetime: iso, title: d.toISOString() }, txt);
  }
  const ver = (mv) => (mv ? `${mv.name}@${mv.version}` : "—");
  const num = (v, digits) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits === undefined ? 2 : digits));
  const pct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);

  function table(columns, rows, opts) {
    const o = opts || {};
    return h("table", { class: o.class || "grid", id: o.id },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.title)))),
      h("tbody", {}, rows.length ? rows.map((r) => h("tr", o.rowAttrs ? o.rowAttrs(r) : {},
        columns.map((c) => h("td", { class: c.class }, c.cell(r)))))
        : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, o.empty || "nothing yet"))));
  }

  function countsTable(title, key, counts, id) {
    const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
    return h("div", { class: "card" }, h("h3", {}, title),
      table([{ title: key, cell: (r) => r[0] }, { title: "devices", cell: (r) => r[1], class: "num" }], rows,
        { id, class: "grid compact" }));
  }

  // ---- API --------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  async function api(path, opts) {
    const o = Object.assign({ method: "GET" }, opts || {});
    const headers = { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY) || ""}` };
    let body;
    if (o.form !== undefined) body = o.form;  // FormData: the browser sets the multipart boundary
    else if (o.body !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(o.body); }
    const resp = await fetch(path, { method: o.method, headers, body });
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    if (!resp.ok) {
      const detail = (data && data.detail) ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail))
        : `HTTP ${resp.status}`;
      if (resp.status === 401) showLogin(detail);
      throw new ApiError(resp.status, detail);
    }
    return o.withHeaders ? { data, headers: resp.headers } : data;
  }

  // ---- login ------------------------------------------------------------------------------------
  function showLogin(message) {
    document.getElementById("login").hidden = false;
    document.getElementById("logout").hidden = true;
    document.getElementById("whoami").textContent = "";
    document.getElementById("login-error").textContent = message || "";
    document.getElementById("token-input").value = "";  // never leave a secret in the form
    app.replaceChildren();
  }

  async function useToken(token) {
    localStorage.setItem(TOKEN_KEY, token.trim());
    try {
      me = await api("/api/v1/whoami");
    } catch (err) {
      localStorage.removeItem(TOKEN_KEY);
      showLogin(err.status === 401 ? "That token was refused: " + err.message : err.message);
      return false;
    }
    document.getElementById("login").hidden = true;
    document.getElementById("logout").hidden = false;
    document.getElementById("whoami").textContent = `${me.name} (${me.scope})`;
    return true;
  }

  // ---- views ------------------------------------------------------------------------------------
  async function health() {
    try { return await (await fetch("/healthz")).json(); } catch (_) { return null; }
  }

  function healthCard(hz) {
    if (!hz) return h("div", { class: "card" }, h("h3", {}, "Fleet manager"), h("p", { class: "error" }, "health unavailable"));
    const ing = hz.ingest || {}, an = hz.analytics || {};
    return h("div", { class: "card", id: "health" }, h("h3", {}, "Fleet manager ", badge(hz.status === "ok" ? "ok" : "degraded",
      hz.status === "ok" ? "passed" : "failed")),
    h("dl", { class: "kv small" },
      h("dt", {}, "database"), h("dd", {}, hz.database),
      h("dt", {}, "ingest"), h("dd", {}, `${ing.stored ?? "—"} stored, ${ing.duplicates ?? 0} duplicates, ${ing.invalid ?? 0} invalid`),
      ing.last_error ? [h("dt", {}, "last rejected"), h("dd", { class: "error" }, ing.last_error)] : null,
      h("dt", {}, "analytics"), h("dd", {}, an.enabled ? `${an.rows_written} rows to Iceberg, last run ` : "off",
        an.enabled ? ago(an.last_run_at) : null),
      an.last_error ? [h("dt", {}, "analytics error"), h("dd", { class: "error" }, an.last_error)] : null));
  }

  async function viewOverview() {
    const [o, rollouts, hz] = await Promise.all([api("/api/v1/overview"), api("/api/v1/rollouts?limit=5"), health()]);
    return [
      h("h2", {}, "Fleet overview"),
      h("div", { class: "cards" },
        h("div", { class: "card stat", id: "stat-devices" }, h("div", { class: "value" }, o.devices), "devices"),
        h("div", { class: "card stat ok", id: "stat-online" }, h("div", { class: "value" }, o.online), "online"),
        h("div", { class: "card stat " + (o.offline ? "warn" : ""), id: "stat-offline" },
          h("div", { class: "value" }, o.offline), "offline"),
        h("div", { class: "card stat" }, h("div", { class: "value" },
          rollouts.filter((r) => r.state === "running" || r.state === "paused").length), "active rollouts")),
      h("div", { class: "cards" },
        countsTable("Model versions", "running", o.versions, "versions"),
        countsTable("Profiles", "profile", o.profiles, "profiles"),
        countsTable("OTA states", "state", o.ota_states, "ota-states"),
        countsTable("Groups", "group", o.groups, "groups"),
        healthCard(hz)),
      h("h3", {}, "Recent rollouts"),
      rolloutTable(rollouts),
    ];
  }

  async function viewDevices(params) {
    const selector = params.get("selector") || "all";
    const online = params.get("online") || "";
    const PAGE = 500;
    const offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    const q = new URLSearchParams({ selector, limit: String(PAGE), offset: String(offset) });
    if (online) q.set("online", online);
    const form = h("form", { class: "filters", id: "device-filter", onsubmit: (ev) => {
      ev.preventDefault();
      const f = new URLSearchParams({ selector: ev.target.selector.value || "all" });
      if (ev.target.online.value) f.set("online", ev.target.online.value);
      location.hash = `#/devices?${f}`;
    } },
    h("label", {}, "selector ", h("input", { name: "selector", value: selector, size: 40,
      placeholder: "tag=line-3,profile=raspberry-pi-5" })),
    h("label", {}, " state ", h("select", { name: "online" },
      h("option", { value: "", selected: !online }, "any"),
      h("option", { value: "true", selected: online === "true" }, "online"),
      h("option", { value: "false", selected: online === "false" }, "offline"))),
    h("button", { type: "submit" }, "Filter"));
    let devices = [];
    let total = 0;
    let error = null;
    try {
      const r = await api(`/api/v1/devices?${q}`, { withHeaders: true });
      devices = r.data;
      total = parseInt(r.headers.get("x-total-count") || String(devices.length), 10);
    } catch (err) {
      if (err.status !== 422) throw err;
      error = err.message;
    }
    const page = (off) => {
      const p = new URLSearchParams(params);
      p.set("offset", String(off));
      return `#/devices?${p}`;
    };
    const pager = h("p", { class: "muted", id: "devices-count" },
      `${total ? offset + 1 : 0}–${offset + devices.length} of ${total} devices `,
      offset > 0 ? link(page(Math.max(0, offset - PAGE)), "← previous") : null, " ",
      offset + devices.length < total ? link(page(offset + PAGE), "next →") : null);
    return [
      h("h2", {}, "Devices"), form,
      error ? h("p", { class: "error", role: "alert" }, error) : pager,
      table([
        { title: "device", cell: (d) => link(`#/device/${encodeURIComponent(d.id)}`, d.id, { class: "device-link" }) },
        { title: "state", cell: (d) => badge(d.online ? "online" : "offline") },
        { title: "profile", cell: (d) => d.profile || "—" },
        { title: "running", cell: (d) => ver(d.active) },
        { title: "desired", cell: (d) => ver(d.desired) },
        { title: "OTA", cell: (d) => d.ota_state || "—" },
        { title: "tags", cell: (d) => d.tags.map((t) => h("span", { class: "tag" }, t)) },
        { title: "group", cell: (d) => d.group || "—" },
        { title: "last seen", cell: (d) => ago(d.last_seen) },
      ], devices, { id: "devices-table", empty: "no device matches" }),
    ];
  }

  function seriesOf(points, key, name) {
    return { name, points: points.map((p) => ({ x: new Date(p.ts), y: p[key] })) };
  }

  const WINDOWS = { "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400 };

  async function viewDevice(id, params) {
    const enc = encodeURIComponent(id);
    const win = WINDOWS[params.get("window")] ? params.get("window") : "1h";
    const since = new Date(Date.now() - WINDOWS[win] * 1000).toISOString();
    const tq = new URLSearchParams({ since, bucket_s: String(WINDOWS[win] / 240), limit: "500" });
    const aq = new URLSearchParams({ target: `device:${id}`, limit: "20" });
    const [d, tel, ev, changes] = await Promise.all([api(`/api/v1/devices/${enc}`), api(`/api/v1/telemetry/${enc}?${tq}`),
      api(`/api/v1/telemetry/${enc}/events?limit=50`), api(`/api/v1/audit?${aq}`)]);
    const windowPicker = h("div", { class: "actions", id: "window-picker" }, "window: ",
      Object.keys(WINDOWS).map((w) => w === win ? h("strong", {}, w)
        : link(`#/device/${enc}?window=${w}`, w, { "data-window": w })));
    const pts = tel.points;
    const inputs = new Set(pts.flatMap((p) => Object.keys(p.inputs || {})));
    const driftSeries = [seriesOf(pts, "confidence_mean", "mean confidence")].concat(
      [...inputs].slice(0, 4).map((k) => ({ name: `input ${k} mean`,
        points: pts.map((p) => ({ x: new Date(p.ts), y: p.inputs && p.inputs[k] ? p.inputs[k].mean : null })) })));
    const info = [
      ["state", badge(d.online ? "online" : "offline")], ["profile", d.profile || "—"],
      ["running", ver(d.active)], ["previous", ver(d.previous)], ["desired", ver(d.desired)],
      ["rollout", d.desired_rollout_id ? link(`#/rollout/${encodeURIComponent(d.desired_rollout_id)}`, d.desired_rollout_id) : "—"],
      ["OTA state", d.ota_state || "—"],
      ["golden check", d.golden_passed === null ? "—" : badge(d.golden_passed ? "passed" : "failed")],
      ["agent", d.agent_version || "—"], ["group", d.group || "—"],
      ["tags", d.tags.map((t) => h("span", { class: "tag" }, t))],
      ["first seen", ago(d.first_seen)], ["last seen", ago(d.last_seen)],
      ["last error", d.last_error ? h("span", { class: "error" }, d.last_error) : "—"],
    ];
    const last = pts.length ? pts[pts.length - 1] : null;
    return [
      h("p", {}, link("#/devices", "← all devices")),
      h("h2", { id: "device-title" }, `Device ${d.id}`),
      h("div", { class: "cards" },
        h("div", { class: "card" }, h("dl", { class: "kv", id: "device-info" }, info.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
        h("div", { class: "card" }, h("h3", {}, "Latest telemetry"), last ? h("dl", { class: "kv", id: "latest" },
          h("dt", {}, "p50 / p95 / p99"), h("dd", {}, `${num(last.p50_ms)} / ${num(last.p95_ms)} / ${num(last.p99_ms)} ms`),
          h("dt", {}, "requests"), h("dd", {}, last.requests), h("dt", {}, "error rate"), h("dd", {}, pct(last.error_rate)),
          h("dt", {}, "confidence"), h("dd", {}, num(last.confidence_mean, 3)),
          h("dt", {}, "cpu / memory"), h("dd", {}, `${num(last.cpu_percent, 0)}% / ${num(last.memory_mb, 0)} MB`),
          h("dt", {}, "model"), h("dd", {}, last.model || "—")) : h("p", { class: "muted" }, "no telemetry yet")),
        me && me.scope === "admin" ? tagEditor(d) : null),
      windowPicker,
      h("div", { class: "charts", id: "device-charts" },
        EdgekitCharts.lineChart({ title: "Inference latency", unit: "ms",
          series: [seriesOf(pts, "p50_ms", "p50"), seriesOf(pts, "p95_ms", "p95"), seriesOf(pts, "p99_ms", "p99")] }),
        EdgekitCharts.lineChart({ title: "Drift", unit: "mean confidence / input means", series: driftSeries }),
        EdgekitCharts.lineChart({ title: "Error rate", unit: "fraction of requests",
          series: [seriesOf(pts, "error_rate", "errors / requests")] })),
      h("h3", {}, "Recent events"),
      table([
        { title: "time", cell: (e) => ago(e.ts) }, { title: "level", cell: (e) => badge(e.level) },
        { title: "kind", cell: (e) => e.kind }, { title: "message", cell: (e) => e.message },
        { title: "rollout", cell: (e) => e.rollout_id || "—" },
      ], ev.events, { id: "events-table", empty: "no events" }),
      h("h3", {}, "Changes made by operators"),
      table([
        { title: "time", cell: (e) => ago(e.ts) }, { title: "actor", cell: (e) => e.actor },
        { title: "action", cell: (e) => e.action },
        { title: "details", cell: (e) => h("code", { class: "details" }, JSON.stringify(e.details)) },
      ], changes.entries, { id: "device-audit", empty: "no changes recorded" }),
    ];
  }

  function tagEditor(d) {
    const msg = h("p", { class: "muted" });
    return h("div", { class: "card" }, h("h3", {}, "Tags and group"),
      h("form", { id: "tag-form", onsubmit: async (e) => {
        e.preventDefault();
        const tags = e.target.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
        try {
          await api(`/api/v1/devices/${encodeURIComponent(d.id)}`, { method: "PATCH",
            body: { tags, group: e.target.group.value.trim() } });
          msg.textContent = "saved";
          render();
        } catch (err) { msg.textContent = err.message; msg.className = "error"; }
      } },
      h("label", {}, "tags ", h("input", { name: "tags", value: d.tags.join(", "), size: 28 })),
      h("label", {}, " group ", h("input", { name: "group", value: d.group || "", size: 10 })),
      h("button", { type: "submit" }, "Save")), msg);
  }

  function progress(done, total, cls) {
    const p = total ? Math.round((100 * done) / total) : 0;
    return h("div", { class: `bar ${cls || ""}`, title: `${done}/${total}` }, h("span", { style: `width:${p}%` }));
  }

  function rolloutTable(rollouts) {
    return table([
      { title: "rollout", cell: (r) => link(`#/rollout/${encodeURIComponent(r.id)}`, r.id, { class: "rollout-link" }) },
      { title: "bundle", cell: (r) => r.bundle }, { title: "selector", cell: (r) => r.selector },
      { title: "state", cell: (r) => badge(r.state) },
      { title: "waves", cell: (r) => {
        const passed = r.waves.filter((w) => w.state === "passed").length;
        return h("span", {}, progress(passed, r.waves.length, r.state), ` ${passed}/${r.waves.length}`);
      } },
      { title: "created", cell: (r) => ago(r.created_at) },
    ], rollouts, { id: "rollouts-table", empty: "no rollouts" });
  }

  async function viewRollouts() {
    const [rollouts, bundles] = await Promise.all([api("/api/v1/rollouts?limit=200"), api("/api/v1/bundles")]);
    return [h("h2", {}, "Rollouts"), me && me.scope === "admin" ? rolloutForm(bundles) : null, rolloutTable(rollouts)];
  }

  function rolloutForm(bundles) {
    const msg = h("p", { class: "error", role: "alert", id: "rollout-form-error" });
    const field = (label, name, value, size) => h("label", {}, `${label} `, h("input", { name, value, size: size || 12 }));
    return h("details", { class: "card", id: "new-rollout" }, h("summary", {}, "New rollout"),
      h("form", { class: "filters", onsubmit: async (e) => {
        e.preventDefault();
        const f = e.target;
        const body = { bundle: f.bundle.value, selector: f.selector.value || "all", waves: f.waves.value,
          soak_s: f.soak.value, max_failure_rate: Number(f.failure.value), max_p95_regression: Number(f.p95.value) };
        try {
          const st = await api("/api/v1/rollouts", { method: "POST", body });
          location.hash = `#/rollout/${encodeURIComponent(st.id)}`;
        } catch (err) { msg.textContent = err.message; }
      } },
      h("label", {}, "bundle ", h("select", { name: "bundle" }, bundles.map((b) => h("option", { value: b.ref }, b.ref)))),
      field("selector", "selector", "all", 24), field("waves %", "waves", "1,10,50,100"), field("soak", "soak", "300s", 6),
      field("max failure rate", "failure", "0.02", 5), field("max p95 regression", "p95", "0.2", 5),
      h("button", { type: "submit" }, "Start rollout")), msg);
  }

  let flash = null;  // a message that survives the re-render after an action: {text, cls}

  function uploadForm() {
    const msg = h("p", { id: "upload-result", class: flash ? flash.cls : "" }, flash ? flash.text : "");
    flash = null;
    return h("form", { class: "filters card", id: "upload-form", onsubmit: async (e) => {
      e.preventDefault();
      const file = e.target.file.files[0];
      if (!file) { msg.textContent = "choose a .ekb file first"; msg.className = "error"; return; }
      const form = new FormData();
      form.append("file", file, file.name);
      try {
        const b = await api("/api/v1/bundles", { method: "POST", form });
        flash = { text: `accepted ${b.ref} (sha256 ${b.sha256.slice(0, 12)}…)`, cls: "ok" };
        render();
      } catch (err) { msg.textContent = `refused: ${err.message}`; msg.className = "error"; }
    } },
    h("label", {}, "Upload a signed bundle ", h("input", { type: "file", name: "file", accept: ".ekb" })),
    h("button", { type: "submit" }, "Upload"), msg);
  }

  function gateView(w) {
    if (!w.gate) return h("p", { class: "muted gate" }, w.state === "soaking" ? "gate pending (soaking)" : "no gate yet");
    const g = w.gate;
    const rows = [
      ["install failures", `${g.failed ?? 0}/${(g.installed ?? 0) + (g.failed ?? 0)} (${pct(g.failure_rate)})`],
      ["error rate", pct(g.error_rate)],
      ["p95 latency", g.p95_new_ms === undefined || g.p95_new_ms === null ? "—"
        : `${num(g.p95_previous_ms)} → ${num(g.p95_new_ms)} ms` + (g.p95_regression === null || g.p95_regression === undefined ? ""
          : ` (${g.p95_regression >= 0 ? "+" : ""}${(100 * g.p95_regression).toFixed(0)}%)`)],
      ["confidence", g.confidence_new === undefined || g.confidence_new === null ? "—"
        : `${num(g.confidence_previous, 3)} → ${num(g.confidence_new, 3)}`],
      ["drift alarms", g.drift_alarm_devices ?? "—"],
    ];
    return h("div", { class: "gate" },
      h("div", {}, "gate ", badge(g.passed ? "passed" : "failed", g.passed ? "passed gate-passed" : "failed gate-failed")),
      (g.reasons || []).length ? h("ul", { class: "reasons" }, g.reasons.map((r) => h("li", {}, r))) : null,
      h("dl", { class: "kv small" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  async function viewRollout(id) {
    const enc = encodeURIComponent(id);
    const [r, members] = await Promise.all([api(`/api/v1/rollouts/${enc}`), api(`/api/v1/rollouts/${enc}/devices`)]);
    const end = r.finished_at ? new Date(r.finished_at) : new Date();
    const span = (end - new Date(r.created_at)) / 1000 + 3600;
    const [tel, evs] = await Promise.all([
      api(`/api/v1/rollouts/${enc}/telemetry?bucket_s=${Math.max(10, Math.round(span / 120))}`),
      api(`/api/v1/rollouts/${enc}/events?limit=100`)]);
    const waveCharts = tel.waves.map((w) => EdgekitCharts.lineChart({
      title: `Wave ${w.index + 1} · p95 latency by version`, unit: "ms", height: 180,
      series: Object.entries(w.series).map(([model, pts]) => ({ name: model,
        points: pts.map((p) => ({ x: new Date(p.ts), y: p.p95_ms })) })) }));
    const msg = h("p", { class: "error", role: "alert" });
    const command = (verb) => h("button", { type: "button", id: `rollout-${verb}`, onclick: async () => {
      if (verb === "abort" && !confirm(`Abort rollout ${r.id}? The wave in flight is rolled back.`)) return;
      try { await api(`/api/v1/rollouts/${enc}/${verb}`, { method: "POST" }); render(); } catch (err) { msg.textContent = err.message; }
    } }, verb);
    const active = r.state === "running" || r.state === "paused";
    return [
      h("p", {}, link("#/rollouts", "← all rollouts")),
      h("h2", { id: "rollout-title" }, `Rollout ${r.id} `, badge(r.state)),
      h("dl", { class: "kv", id: "rollout-info" },
        h("dt", {}, "bundle"), h("dd", {}, r.bundle), h("dt", {}, "selector"), h("dd", {}, r.selector),
        h("dt", {}, "soak"), h("dd", {}, `${r.soak_s}s per wave`),
        h("dt", {}, "thresholds"), h("dd", {}, `failures ≤ ${pct(r.max_failure_rate)}, p95 ≤ +${(100 * r.max_p95_regression).toFixed(0)}%, confidence drop ≤ ${r.max_confidence_drop}`),
        h("dt", {}, "created"), h("dd", {}, ago(r.created_at), r.created_by ? ` by ${r.created_by}` : ""),
        r.reason ? [h("dt", {}, "reason"), h("dd", { class: "error", id: "rollout-reason" }, r.reason)] : null),
      me && me.scope === "admin" && active ? h("div", { class: "actions" },
        r.state === "running" ? command("pause") : command("resume"), command("abort")) : null,
      msg,
      h("div", { class: "waves", id: "waves" }, r.waves.map((w) => h("div", { class: `card wave wave-${w.state}`, dataset: { wave: w.index } },
        h("h3", {}, `Wave ${w.index + 1} · ${w.percent}% `, badge(w.state)),
        progress(w.installed, w.devices, w.state),
        h("p", { class: "small" }, `${w.devices} devices: ${w.installed} installed, ${w.waiting} waiting, ${w.failed} failed, ${w.rolled_back} rolled back`),
        gateView(w)))),
      waveCharts.length ? h("div", { class: "charts", id: "rollout-charts" }, waveCharts) : null,
      h("h3", {}, "Devices"),
      table([
        { title: "device", cell: (m) => link(`#/device/${encodeURIComponent(m.device_id)}`, m.device_id) },
        { title: "wave", cell: (m) => m.wave + 1 }, { title: "state", cell: (m) => badge(m.state) },
        { title: "previous", cell: (m) => m.previous || "—" }, { title: "installed", cell: (m) => ago(m.installed_at) },
        { title: "error", cell: (m) => m.error || "" },
      ], members.devices, { id: "rollout-devices" }),
      h("h3", {}, "Device events in this rollout"),
      table([
        { title: "time", cell: (e) => ago(e.ts) },
        { title: "device", cell: (e) => link(`#/device/${encodeURIComponent(e.device_id)}`, e.device_id) },
        { title: "level", cell: (e) => badge(e.level) }, { title: "kind", cell: (e) => e.kind },
        { title: "message", cell: (e) => e.message },
      ], evs.events, { id: "rollout-events", empty: "no events yet" }),
    ];
  }

  async function viewBundles() {
    const bundles = await api("/api/v1/bundles");
    return [h("h2", {}, "Bundles"), me && me.scope === "admin" ? uploadForm() : null, table([
      { title: "bundle", cell: (b) => b.ref }, { title: "precision", cell: (b) => b.precision || "—" },
      { title: "size", cell: (b) => `${(b.size / 1024).toFixed(1)} KiB`, class: "num" },
      { title: "sha256", cell: (b) => h("code", { title: b.sha256 }, b.sha256.slice(0, 12) + "…") },
      { title: "signed by", cell: (b) => b.key_id || "—" }, { title: "uploaded", cell: (b) => ago(b.uploaded_at) },
    ], bundles, { id: "bundles-table", empty: "no bundles; push one with `edgekit fleet push FILE.ekb`" })];
  }

  async function viewAudit() {
    const data = await api("/api/v1/audit?limit=200");
    const result = h("div", { id: "verify-result" });
    const verify = h("button", { type: "button", id: "verify-chain", onclick: async () => {
      const v = await api("/api/v1/audit/verify");
      result.replaceChildren(v.ok ? badge(`chain intact: ${v.entries} entries`, "passed")
        : badge(`TAMPERED: ${v.error}`, "failed"));
    } }, "Verify hash chain");
    return [h("h2", {}, "Audit log"), h("div", { class: "actions" }, verify, result), table([
      { title: "#", cell: (e) => e.seq, class: "num" }, { title: "time", cell: (e) => ago(e.ts) },
      { title: "actor", cell: (e) => e.actor }, { title: "action", cell: (e) => e.action },
      { title: "target", cell: (e) => e.target },
      { title: "details", cell: (e) => h("code", { class: "details" }, JSON.stringify(e.details)) },
      { title: "hash", cell: (e) => h("code", { title: e.hash }, e.hash.slice(0, 10)) },
    ], data.entries, { id: "audit-table", empty: "no entries" })];
  }

  // ---- router -----------------------------------------------------------------------------------
  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "") || "overview";
    const [path, query] = raw.split("?");
    const parts = path.split("/").map(decodeURIComponent);
    return { view: parts[0], arg: parts.slice(1).join("/"), params: new URLSearchParams(query || "") };
  }

  async function render() {
    if (!localStorage.getItem(TOKEN_KEY)) { showLogin(); return; }
    const { view, arg, params } = parseHash();
    const seq = ++renderSeq;
    const nav = { device: "devices", rollout: "rollouts" }[view] || view;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === nav);
    const views = { overview: viewOverview, devices: () => viewDevices(params), device: () => viewDevice(arg, params),
      rollouts: viewRollouts, rollout: () => viewRollout(arg), bundles: viewBundles, audit: viewAudit };
    const fn = views[view];
    try {
      const content = fn ? await fn() : [h("h2", {}, "Not found"), h("p", {}, `no view ${view}`)];
      if (seq !== renderSeq) return;
      app.replaceChildren(...[].concat(content).flat().filter(Boolean));
      app.dataset.view = view;
      statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (seq !== renderSeq || err.status === 401) return;
      app.replaceChildren(h("h2", {}, "Error"), h("p", { class: "error", role: "alert" }, err.message));
      app.dataset.view = "error";
    }
  }

  /** True while the user is typing into a form or has one open: a refresh would wipe their input. */
  function editing() {
    const el = document.activeElement;
    if (el && app.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName)) return true;
    return Boolean(app.querySelector("details[open]"));
  }

  function setAutoRefresh(on) {
    localStorage.setItem(REFRESH_KEY, on ? "on" : "off");
    document.getElementById("autorefresh").checked = on;
    if (refreshTimer) clearInterval(refreshTimer);
    refreshTimer = on ? setInterval(() => { if (!document.hidden && !editing()) render(); }, 10000) : null;
  }

  document.getElementById("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (await useToken(document.getElementById("token-input").value)) render();
  });
  document.getElementById("logout").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); me = null; showLogin(); });
  document.getElementById("autorefresh").addEventListener("change", (e) => setAutoRefresh(e.target.checked));
  window.addEventListener("hashchange", render);

  (async function start() {
    setAutoRefresh(localStorage.getItem(REFRESH_KEY) !== "off");
    const token = localStorage.getItem(TOKEN_KEY);
    if (token && await useToken(token)) render(); else if (!token) showLogin();
  })();
})();
