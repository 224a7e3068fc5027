// The edge's local page: polls the local API and renders rooms, actuators, alerts, commands,
// rules and rejected messages. No framework, no build step, nothing from the internet.
// Every string from the API or the config is set with textContent, never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 3000;
  const CHART_MS = 60000;
  const CHART_HOURS = 6;
  const CSRF = { "X-Requested-With": "smartfarm-edge" };
  const HOLDS = [15, 30, 60, 120, 240];
  // The farm's words come from the edge (GET /api/vocabulary, i.e. shared.vocabulary), loaded
  // once after login: species, stages and actuator roles with their labels; the room's metrics
  // (not a node's battery) with label, unit and decimals; the banded ones are charted.
  let STAGES = []; // [[id, label], ...]
  let SPECIES = {};
  let METRICS = {};
  let CHARTED = [];
  let ROLES = {};

  const $ = (id) => document.getElementById(id);
  let pollTimer = null;
  let chartTimer = null;
  let series = {}; // room id -> {metric: [[t, v], ...]}
  let lastRooms = [];

  // ---- DOM helpers ----
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== false && value !== null && value !== undefined) {
        node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(typeof child === "string" ? document.createTextNode(child) : child);
      }
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  // Keep one DOM node per item (by key) across polls, so a button being pressed or a select
  // being opened is not replaced under the user's finger.
  function reconcile(container, items, keyOf, create, update) {
    const old = new Map();
    for (const child of Array.from(container.children)) old.set(child.dataset.key, child);
    let previous = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = old.get(key);
      if (node) old.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      node.item = item;
      update(node, item);
      const wanted = previous ? previous.nextSibling : container.firstChild;
      if (node !== wanted) container.insertBefore(node, wanted);
      previous = node;
    }
    for (const node of old.values()) node.remove();
  }

  function setClass(node, base, extra) {
    node.className = extra ? `${base} ${extra}` : base;
  }

  // ---- formatting ----
  function fmtValue(metric, value) {
    const spec = METRICS[metric] || { unit: "", digits: 1 };
    return `${Number(value).toFixed(spec.digits)} ${spec.unit}`.trim();
  }

  function fmtBand(metric, band) {
    if (!band) return "";
    const spec = METRICS[metric] || { unit: "", digits: 1 };
    const f = (v) => Number(v).toFixed(spec.digits);
    if (band.low !== null && band.high !== null) return `target ${f(band.low)}–${f(band.high)} ${spec.unit}`;
    if (band.low !== null) return `target ≥ ${f(band.low)} ${spec.unit}`;
    return `target ≤ ${f(band.high)} ${spec.unit}`;
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return today ? time : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function fmtAgo(iso) {
    if (!iso) return "never";
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  async function loadVocabulary() {
    if (STAGES.length) return;
    const v = await api("/api/vocabulary");
    SPECIES = Object.fromEntries(v.species.map((s) => [s.id, s.label]));
    ROLES = Object.fromEntries(v.actuator_roles.map((r) => [r.id, r.label]));
    METRICS = Object.fromEntries(v.metrics.filter((m) => m.room)
      .map((m) => [m.name, { label: m.label, unit: m.unit, digits: m.decimals }]));
    CHARTED = v.metrics.filter((m) => m.banded).map((m) => m.name);
    STAGES = v.stages.map((s) => [s.id, s.label]);
  }

  const stageName = (stage) => (STAGES.find(([id]) => id === stage) || [stage, stage])[1];

  // ---- API ----
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const init = { method: options.method || "GET", headers: { ...CSRF, Accept: "application/json" }, credentials: "same-origin" };
    if (options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    let data = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) data = await response.json();
    if (!response.ok) {
      const detail = data && data.detail ? data.detail : `${response.status} ${response.statusText}`;
      if (response.status === 401 && !options.login) showLogin();
      throw new ApiError(response.status, detail);
    }
    return data;
  }

  let flashTimer = null;
  function flash(message, isError) {
    const box = $("flash");
    box.textContent = message;
    setClass(box, "flash", isError ? "error" : "ok");
    box.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { box.hidden = true; }, isError ? 8000 : 4000);
  }

  async function act(label, fn) {
    try {
      const result = await fn();
      flash(label);
      await refresh();
      return result;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) flash(`${err.message}`, true);
      return null;
    }
  }

  // ---- login ----
  function showLogin() {
    stopPolling();
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    setStatus("bad", "logged out");
    $("login-password").focus();
  }

  function showApp() {
    $("login").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    startPolling();
  }

  async function onLogin(event) {
    event.preventDefault();
    const error = $("login-error");
    error.hidden = true;
    try {
      await api("/api/login", {
        method: "POST",
        login: true,
        body: { username: $("login-user").value, password: $("login-password").value },
      });
      $("login-password").value = "";
      showApp();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    }
  }

  async function onLogout() {
    try {
      await api("/api/logout", { method: "POST", body: {}, login: true });
    } finally {
      showLogin();
    }
  }

  // ---- status bar ----
  function setStatus(level, text) {
    setClass($("status-dot"), "dot", level);
    $("status-text").textContent = text;
  }

  // ---- rooms ----
  function createRoom(room) {
    const refs = {};
    const card = h("article", { class: "card room" },
      h("header", { class: "room-head" },
        refs.name = h("h2"),
        refs.species = h("span", { class: "muted" })),
      h("div", { class: "stage-row" },
        h("label", { for: `stage-${room.id}` }, "Stage"),
        refs.stage = h("select", { id: `stage-${room.id}`, onchange: () => onStage(card) },
          ...STAGES.map(([id, name]) => h("option", { value: id }, name))),
        refs.since = h("span", { class: "muted small" })),
      refs.metrics = h("div", { class: "metrics" }),
      refs.actHead = h("div", { class: "act-head" },
        h("h3", {}, "Actuators"),
        h("label", { class: "small" }, "manual hold ",
          refs.hold = h("select", {}, ...HOLDS.map((m) => h("option", { value: m, selected: m === 30 }, `${m} min`))))),
      refs.actuators = h("ul", { class: "actuators" }),
      refs.noActuators = h("p", { class: "muted small" }, "No actuators in this room: monitoring only."));
    card.refs = refs;
    return card;
  }

  function updateRoom(card, room) {
    const r = card.refs;
    r.name.textContent = room.name;
    r.species.textContent = SPECIES[room.species] || room.species.replace("_", " ");
    if (document.activeElement !== r.stage) r.stage.value = room.stage;
    r.since.textContent = room.stage_started ? `since ${room.stage_started}` : "";
    const metrics = Object.keys(METRICS).filter((m) => room.readings[m] || room.bands[m]);
    reconcile(r.metrics, metrics, (m) => m, createMetric, (node, m) => updateMetric(node, m, room));
    reconcile(r.actuators, room.actuators, (a) => a.id, (a) => createActuator(a, card), updateActuator);
    r.actHead.hidden = room.actuators.length === 0;
    r.noActuators.hidden = room.actuators.length > 0;
  }

  function createMetric() {
    const refs = {};
    const node = h("div", { class: "metric" },
      refs.label = h("div", { class: "metric-label" }),
      refs.value = h("div", { class: "metric-value" }),
      refs.band = h("div", { class: "metric-band" }),
      refs.chart = h("div", { class: "spark" }));
    node.refs = refs;
    return node;
  }

  function updateMetric(node, metric, room) {
    const r = node.refs;
    const reading = room.readings[metric];
    const band = room.bands[metric];
    r.label.textContent = METRICS[metric].label;
    let state = "none";
    if (!reading) {
      r.value.textContent = "no data";
    } else {
      r.value.textContent = fmtValue(metric, reading.value);
      if (reading.stale) state = "stale";
      else if (reading.in_band === true) state = "ok";
      else if (reading.in_band === false) state = "bad";
      r.value.title = `${fmtAgo(reading.at)}${reading.stale ? " (stale: sensor silent)" : ""}`;
    }
    setClass(node, "metric", state);
    r.band.textContent = reading && reading.stale ? `stale · ${fmtAgo(reading.at)}` : fmtBand(metric, band);
    const points = (series[room.id] || {})[metric];
    const key = points ? `${points.length}:${points.length ? points[points.length - 1][0] : 0}` : "";
    if (CHARTED.includes(metric) && r.chart.dataset.drawn !== key) {
      r.chart.replaceChildren(sparkline(points || [], band));
      r.chart.dataset.drawn = key;
    }
  }

  // A tiny SVG line of the last hours with the target band shaded behind it.
  function sparkline(points, band) {
    const W = 100, H = 28;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    if (points.length < 2) {
      chart.setAttribute("aria-label", "not enough data yet");
      return chart;
    }
    const values = points.map((p) => p[1]);
    let lo = Math.min(...values), hi = Math.max(...values);
    if (band) {
      if (band.low !== null) { lo = Math.min(lo, band.low); hi = Math.max(hi, band.low); }
      if (band.high !== null) { hi = Math.max(hi, band.high); lo = Math.min(lo, band.high); }
    }
    if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * W;
    const y = (v) => H - ((v - lo) / (hi - lo)) * H;
    if (band) {
      const top = band.high !== null ? y(band.high) : 0;
      const bottom = band.low !== null ? y(band.low) : H;
      chart.append(svg("rect", { class: "band", x: 0, y: top, width: W, height: Math.max(0, bottom - top) }));
    }
    const line = points.map((p) => `${x(p[0]).toFixed(2)},${y(p[1]).toFixed(2)}`).join(" ");
    chart.append(svg("polyline", { class: "line", points: line, "vector-effect": "non-scaling-stroke" }));
    chart.setAttribute("aria-label", `last ${CHART_HOURS} h: ${values.length} points`);
    return chart;
  }

  function createActuator(actuator, card) {
    const refs = {};
    const node = h("li", { class: "actuator" },
      h("div", { class: "act-info" },
        refs.name = h("span", { class: "act-name" }),
        refs.state = h("span", { class: "pill" }),
        refs.override = h("span", { class: "badge" }),
        refs.detail = h("div", { class: "muted small" })),
      h("div", { class: "act-buttons" },
        refs.on = h("button", { type: "button", onclick: () => onManual(node, card, "on") }, "On"),
        refs.off = h("button", { type: "button", onclick: () => onManual(node, card, "off") }, "Off"),
        refs.auto = h("button", { type: "button", class: "auto", onclick: () => onAuto(node) }, "Auto")));
    node.refs = refs;
    return node;
  }

  function updateActuator(node, a) {
    const r = node.refs;
    r.name.textContent = `${ROLES[a.role] || a.role} · ${a.name}`;
    r.state.textContent = a.on ? "ON" : "off";
    setClass(r.state, "pill", a.on ? "on" : "off");
    if (a.override) {
      r.override.textContent = `manual ${a.override.on ? "on" : "off"} until ${fmtTime(a.override.until)}`;
      r.override.hidden = false;
    } else {
      r.override.hidden = true;
    }
    r.auto.disabled = !a.override;
    const parts = [];
    if (a.since) parts.push(`${a.on ? "on" : "off"} since ${fmtTime(a.since)}`);
    if (a.reported) {
      const said = Object.entries(a.reported).map(([k, v]) => `${k}=${v}`).join(", ");
      if (said) parts.push(`device says ${said}`);
    }
    r.detail.textContent = parts.join(" · ");
  }

  async function onManual(node, card, action) {
    const a = node.item;
    const hold = Number(card.refs.hold.value);
    await act(`${a.name}: ${action} for ${hold} min (manual)`, () =>
      api("/api/commands", { method: "POST", body: { device_id: a.id, action, hold_minutes: hold } }));
  }

  async function onAuto(node) {
    const a = node.item;
    await act(`${a.name}: back to automation`, () =>
      api(`/api/overrides/${encodeURIComponent(a.id)}`, { method: "DELETE" }));
  }

  async function onStage(card) {
    const room = card.item;
    const stage = card.refs.stage.value;
    if (stage === room.stage) return;
    if (!window.confirm(`Move ${room.name} to ${stageName(stage)}? Its targets and rules change.`)) {
      card.refs.stage.value = room.stage;
      return;
    }
    await act(`${room.name} is now in ${stageName(stage)}`, () =>
      api(`/api/rooms/${encodeURIComponent(room.id)}/stage`, { method: "POST", body: { stage } }));
    card.refs.stage.blur();
    loadCharts();
  }

  // ---- alerts, commands, rules, quarantine ----
  function renderAlerts(alerts) {
    $("alerts-section").hidden = alerts.length === 0;
    reconcile($("alerts"), alerts, (a) => a.id,
      () => {
        const refs = {};
        const li = h("li", {}, refs.msg = h("span"), refs.when = h("span", { class: "muted small" }));
        li.refs = refs;
        return li;
      },
      (li, a) => {
        setClass(li, "alert", a.severity);
        li.refs.msg.textContent = a.message;
        li.refs.when.textContent = ` since ${fmtTime(a.first_at)}${a.count > 1 ? ` · ×${a.count}` : ""}`;
      });
  }

  function renderCommands(commands) {
    $("commands-empty").hidden = commands.length > 0;
    reconcile($("commands"), commands, (c) => c.command_id,
      () => {
        const refs = {};
        const tr = h("tr", {},
          refs.time = h("td"), refs.device = h("td"), refs.action = h("td"), refs.source = h("td"),
          h("td", {}, refs.state = h("span", { class: "pill" })));
        tr.refs = refs;
        return tr;
      },
      (tr, c) => {
        tr.refs.time.textContent = fmtTime(c.created_at);
        tr.refs.device.textContent = c.device_id;
        tr.refs.action.textContent = c.action;
        tr.refs.source.textContent = c.source;
        tr.refs.source.title = c.reason || "";
        tr.refs.state.textContent = c.state.replace("_", " ");
        tr.refs.state.title = c.error || "";
        setClass(tr.refs.state, "pill", `cmd-${c.state}`);
      });
  }

  function renderRules(rules) {
    reconcile($("rules"), rules, (r) => r.id,
      (rule) => {
        const refs = {};
        const li = h("li", { class: "rule" },
          h("label", { class: "switch" },
            refs.toggle = h("input", { type: "checkbox", onchange: () => onRule(li) }),
            h("span", { class: "track", "aria-hidden": "true" })),
          h("div", {}, refs.title = h("div", { class: "rule-title" }), refs.desc = h("div", { class: "muted small" })));
        refs.toggle.setAttribute("aria-label", `enable rule ${rule.id}`);
        li.refs = refs;
        return li;
      },
      (li, r) => {
        if (!li.busy) li.refs.toggle.checked = r.enabled;
        li.refs.title.textContent = r.description || `${r.type} rule`;
        li.refs.desc.textContent = `${r.id} · drives ${r.actuator}${r.enabled ? "" : " · off: automation ignores it"}`;
        setClass(li, "rule", r.enabled ? "" : "disabled");
      });
  }

  async function onRule(li) {
    const rule = li.item;
    const enabled = li.refs.toggle.checked;
    li.busy = true;
    const done = await act(`rule ${rule.id} ${enabled ? "enabled" : "disabled"}`, () =>
      api(`/api/rules/${encodeURIComponent(rule.id)}`, { method: "POST", body: { enabled } }));
    li.busy = false;
    if (done === null) li.refs.toggle.checked = rule.enabled;
  }

  function renderQuarantine(q) {
    $("quarantine-count").textContent = String(q.count);
    reconcile($("quarantine"), q.items, (i) => i.id,
      () => {
        const refs = {};
        const li = h("li", {}, refs.reason = h("div"), refs.meta = h("div", { class: "muted small mono" }));
        li.refs = refs;
        return li;
      },
      (li, i) => {
        li.refs.reason.textContent = i.reason;
        li.refs.meta.textContent = `${fmtTime(i.received_at)} · ${i.topic} · ${i.size} B`;
        li.refs.meta.title = i.preview;
      });
  }

  // ---- polling ----
  async function refresh() {
    try {
      await loadVocabulary();
      const [rooms, alerts, commands, rules, quarantine, health] = await Promise.all([
        api("/api/rooms"),
        api("/api/alerts?active=1&limit=20"),
        api("/api/commands?limit=15"),
        api("/api/rules"),
        api("/api/quarantine?limit=5"),
        fetch("/health", { credentials: "same-origin" }).then((r) => r.json()),
      ]);
      lastRooms = rooms;
      reconcile($("rooms"), rooms, (r) => r.id, createRoom, updateRoom);
      renderAlerts(alerts);
      renderCommands(commands);
      renderRules(rules);
      renderQuarantine(quarantine);
      const time = new Date().toLocaleTimeString();
      if (health.broker_connected) setStatus("ok", `devices connected · updated ${time}`);
      else setStatus("warn", `broker not connected · updated ${time}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      setStatus("bad", `edge not answering (${err.message}); retrying…`);
    }
  }

  async function loadCharts() {
    for (const room of lastRooms) {
      try {
        const data = await api(`/api/rooms/${encodeURIComponent(room.id)}/readings?hours=${CHART_HOURS}&points=120`);
        series[room.id] = data.series;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return;
      }
    }
    reconcile($("rooms"), lastRooms, (r) => r.id, createRoom, updateRoom);
  }

  function startPolling() {
    stopPolling();
    refresh().then(loadCharts);
    pollTimer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
    chartTimer = setInterval(() => { if (!document.hidden) loadCharts(); }, CHART_MS);
  }

  function stopPolling() {
    clearInterval(pollTimer);
    clearInterval(chartTimer);
    pollTimer = chartTimer = null;
  }

  // ---- start ----
  document.addEventListener("DOMContentLoaded", async () => {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", onLogout);
    try {
      await api("/api/session");
      showApp();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) {
        setStatus("bad", `edge not answering (${err.message})`);
        showLogin();
      }
    }
  });
})();
