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
  let ALL_METRICS = {}; // every metric (a node's battery too): name -> {label, unit, digits}
  let DEVICES = {}; // device id -> {name, role, kind, room_id, status}
  let ROOM_NAMES = {}; // room id -> name
  let RULES = {}; // rule id -> rule

  const $ = (id) => document.getElementById(id);
  let pollTimer = null;
  let chartTimer = null;
  let series = {}; // room id -> {metric: [[t, v], ...]}
  let lastRooms = [];

  // ---- DOM helpers ----
  const { h, duration: fmtDuration } = window.smartfarmDom;  // dom.js

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

  // Dates as a grower reads them: "14:05" today, "yesterday 14:05", "6 Dec 14:05", and
  // durations "3 min ago", "in 12 min", "1 h 5 min". Never raw ISO strings or epoch numbers.
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  const dayStart = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();

  function toDate(value) {
    if (value === null || value === undefined || value === "") return null;
    if (typeof value === "number") return new Date(value * 1000);
    // A bare date ("2026-12-01", a stage start) is a local calendar day, not UTC midnight.
    const day = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
    const d = day ? new Date(Number(day[1]), Number(day[2]) - 1, Number(day[3])) : new Date(value);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function fmtDay(value) {
    const d = toDate(value);
    if (!d) return "—";
    const year = d.getFullYear() !== new Date().getFullYear() ? ` ${d.getFullYear()}` : "";
    return `${d.getDate()} ${MONTHS[d.getMonth()]}${year}`;
  }

  function fmtTime(value) {
    const d = toDate(value);
    if (!d) return "—";
    const days = Math.round((dayStart(new Date()) - dayStart(d)) / 86400000);
    if (days === 0) return clock(d);
    if (days === 1) return `yesterday ${clock(d)}`;
    return `${fmtDay(d)} ${clock(d)}`;
  }

  function fmtFull(value) {
    const d = toDate(value);
    return d ? `${fmtDay(d)} ${d.getFullYear()} ${clock(d)}:${pad(d.getSeconds())}` : "";
  }

  function fmtAgo(value) {
    const d = toDate(value);
    if (!d) return "never";
    const s = (Date.now() - d.getTime()) / 1000;
    if (s < 45) return "just now";
    if (s >= 86400 * 2) return `${fmtDuration(s)} ago`;
    if (s >= 86400) return "yesterday";
    return `${fmtDuration(s)} ago`;
  }

  function fmtIn(value) {
    const d = toDate(value);
    if (!d) return "";
    const s = (d.getTime() - Date.now()) / 1000;
    if (s <= 0) return "any moment now";
    if (s < 60) return "in less than a minute";
    return `in ${fmtDuration(s)}`;
  }

  // The engine's reasons, in the page's words: metric labels, rule descriptions, readable
  // times ("until 2026-12-06 14:30 UTC" -> "until 14:30"), minutes instead of many seconds.
  function humanize(reason) {
    if (!reason) return "";
    let text = String(reason);
    text = text.replace(/(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}) UTC/g, (_, day, time) => fmtTime(`${day}T${time}:00Z`));
    text = text.replace(/\(rule ([\w-]+)\)/g, (whole, id) => {
      const rule = RULES[id];
      return rule && rule.description ? `(rule: ${rule.description})` : `(rule ${id})`;
    });
    text = text.replace(/\b(\d+(?:\.\d+)?) s\b/g, (whole, n) => (Number(n) >= 120 ? fmtDuration(Number(n)) : whole));
    text = text.replace(/\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b/g, (word) => (ALL_METRICS[word] ? ALL_METRICS[word].label : word));
    return text;
  }

  const SOURCES = { automation: "automation", manual: "by hand", boot: "edge start-up", cloud: "the cloud" };
  const STATES = {
    pending: "waiting for the device", acked: "done", failed: "refused by the device",
    timed_out: "no answer", superseded: "replaced by a newer command",
  };

  function actionWords(action, value) {
    if (action === "on") return "Switch on";
    if (action === "off") return "Switch off";
    if (action === "set") {
      if (typeof value === "boolean") return value ? "Switch on" : "Switch off";
      return value === null || value === undefined ? "Set level" : `Set to ${Number(value)} %`;
    }
    if (action === "ota") return "Firmware update";
    return String(action).replace(/_/g, " ");
  }

  // "Heater (Room A)", or "Heater · Left wall (Room A)" when the device has a name of its own;
  // withRoom false where the room is said anyway.
  function deviceName(id, withRoom = true) {
    const d = DEVICES[id];
    if (!d) return id;
    const role = d.role ? (ROLES[d.role] || d.role) : "Sensor";
    const name = d.name && d.name !== id ? `${role} · ${d.name}` : role;
    return withRoom ? `${name} (${ROOM_NAMES[d.room_id] || d.room_id})` : name;
  }

  async function loadVocabulary() {
    if (STAGES.length) return;
    const v = await api("/api/vocabulary");
    SPECIES = Object.fromEntries(v.species.map((s) => [s.id, s.label]));
    ROLES = Object.fromEntries(v.actuator_roles.map((r) => [r.id, r.label]));
    METRICS = Object.fromEntries(v.metrics.filter((m) => m.room)
      .map((m) => [m.name, { label: m.label, unit: m.unit, digits: m.decimals }]));
    ALL_METRICS = Object.fromEntries(v.metrics
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
        h("label", { class: "small", for: `hold-${room.id}` }, "Hand switching holds for"),
        refs.hold = h("select", { id: `hold-${room.id}` },
          ...HOLDS.map((m) => h("option", { value: m, selected: m === 30 }, m < 60 ? `${m} min` : `${m / 60} h`)))),
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
    r.since.textContent = room.stage_started ? `since ${fmtDay(room.stage_started)}` : "";
    r.since.title = room.stage_started ? fmtAgo(room.stage_started) : "";
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
      r.value.title = `read ${fmtAgo(reading.at)} (${fmtTime(reading.at)})${reading.stale ? ", stale: sensor silent" : ""}`;
    }
    setClass(node, "metric", state);
    r.band.textContent = reading && reading.stale ? `no fresh reading · last ${fmtAgo(reading.at)}` : fmtBand(metric, band);
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
        h("div", { class: "act-title" },
          refs.name = h("span", { class: "act-name" }),
          refs.state = h("span", { class: "pill" })),
        refs.detail = h("div", { class: "act-detail" }),
        refs.why = h("div", { class: "act-why muted small" }),
        refs.override = h("div", { class: "hold manual" },
          refs.overrideText = h("span"),
          refs.auto = h("button", { type: "button", class: "auto", onclick: () => onAuto(node) },
            "Back to auto", refs.autoName = h("span", { class: "sr-only" }))),
        refs.safety = h("div", { class: "hold safety" }),
        refs.reported = h("div", { class: "muted small" })),
      h("div", { class: "act-buttons" },
        refs.on = h("button", { type: "button", onclick: () => onManual(node, card, "on") },
          "Turn on", refs.onName = h("span", { class: "sr-only" })),
        refs.off = h("button", { type: "button", onclick: () => onManual(node, card, "off") },
          "Turn off", refs.offName = h("span", { class: "sr-only" }))));
    node.refs = refs;
    return node;
  }

  function reportedWords(reported) {
    if (!reported) return "";
    const parts = [];
    for (const [key, value] of Object.entries(reported)) {
      if (key === "role" || value === null || value === undefined) continue;
      if (key === "on") parts.push(value ? "on" : "off");
      else if (key === "level") parts.push(`level ${Number(value)} %`);
      else if (ALL_METRICS[key]) parts.push(`${ALL_METRICS[key].label.toLowerCase()} ${fmtValueOf(key, value)}`);
      else parts.push(`${key.replace(/_/g, " ")} ${value}`);
    }
    return parts.length ? `The device reports: ${parts.join(", ")}` : "";
  }

  function fmtValueOf(metric, value) {
    const spec = ALL_METRICS[metric] || { unit: "", digits: 1 };
    return `${Number(value).toFixed(spec.digits)} ${spec.unit}`.trim();
  }

  function updateActuator(node, a) {
    const r = node.refs;
    const role = ROLES[a.role] || a.role;
    r.name.textContent = a.name && a.name !== a.id ? `${role} · ${a.name}` : role;
    r.name.title = a.id;
    r.onName.textContent = ` ${role}`;
    r.offName.textContent = ` ${role}`;
    r.autoName.textContent = ` for ${role}`;
    r.state.textContent = a.on ? "On" : "Off";
    setClass(r.state, "pill", a.on ? "on" : "off");
    r.detail.textContent = a.since
      ? `${a.on ? "On" : "Off"} for ${fmtDuration((Date.now() - toDate(a.since).getTime()) / 1000)} (since ${fmtTime(a.since)})`
      : "";
    const last = a.last_command;
    if (last && last.reason) {
      r.why.textContent = `Why: ${SOURCES[last.source] || last.source} — ${humanize(last.reason)} · ${fmtAgo(last.at)}`;
    } else if (last) {
      r.why.textContent = `Last switched by ${SOURCES[last.source] || last.source} ${fmtAgo(last.at)}`;
    } else {
      r.why.textContent = "";
    }
    r.why.hidden = !r.why.textContent;
    r.detail.hidden = !r.detail.textContent;
    if (a.override) {
      const until = toDate(a.override.until);
      const left = until ? fmtDuration((until.getTime() - Date.now()) / 1000) : "";
      r.overrideText.textContent = `Switched ${a.override.on ? "on" : "off"} by hand (${a.override.by}): ${left} left, then automation takes over (at ${fmtTime(a.override.until)}).`;
      r.overrideText.title = fmtFull(a.override.until);
      r.override.hidden = false;
    } else {
      r.override.hidden = true;
    }
    const hold = a.safety_hold;
    if (hold) {
      const lets = hold.until ? ` Lets go ${fmtIn(hold.until)} (at ${fmtTime(hold.until)}).` : "";
      r.safety.textContent = `Held ${hold.wanted_on ? "off" : "on"} by a safety limit (it would be ${hold.wanted_on ? "on" : "off"}): ${humanize(hold.reason)}.${lets}`;
      r.safety.hidden = false;
    } else {
      r.safety.hidden = true;
    }
    r.reported.textContent = reportedWords(a.reported);
    r.reported.hidden = !r.reported.textContent;
  }

  async function onManual(node, card, action) {
    const a = node.item;
    const hold = Number(card.refs.hold.value);
    const name = ROLES[a.role] || a.name;
    await act(`${name} switched ${action} by hand for ${fmtDuration(hold * 60)}`, () =>
      api("/api/commands", { method: "POST", body: { device_id: a.id, action, hold_minutes: hold } }));
  }

  async function onAuto(node) {
    const a = node.item;
    await act(`${ROLES[a.role] || a.name}: back to automation`, () =>
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
        li.refs.msg.textContent = humanize(a.message);
        li.refs.when.textContent = ` · since ${fmtTime(a.first_at)} (${fmtAgo(a.first_at)})${a.count > 1 ? ` · ${a.count} times` : ""}`;
        li.refs.when.title = fmtFull(a.first_at);
      });
  }

  function renderCommands(commands) {
    $("commands-empty").hidden = commands.length > 0;
    reconcile($("commands"), commands, (c) => c.command_id,
      () => {
        const refs = {};
        const tr = h("tr", {},
          refs.time = h("td", { class: "c-time" }), refs.device = h("td", { class: "c-device" }),
          refs.action = h("td", { class: "c-action" }),
          h("td", { class: "c-by" }, refs.source = h("div"), refs.reason = h("div", { class: "muted small" })),
          h("td", { class: "c-state" }, refs.state = h("span", { class: "pill" })));
        tr.refs = refs;
        return tr;
      },
      (tr, c) => {
        tr.refs.time.textContent = fmtAgo(c.created_at);
        tr.refs.time.title = fmtFull(c.created_at);
        tr.refs.device.textContent = deviceName(c.device_id);
        tr.refs.action.textContent = actionWords(c.action, c.value);
        tr.refs.source.textContent = SOURCES[c.source] || c.source;
        tr.refs.reason.textContent = humanize(c.reason);
        tr.refs.state.textContent = STATES[c.state] || c.state.replace(/_/g, " ");
        tr.refs.state.title = c.error || "";
        setClass(tr.refs.state, "pill", `cmd-${c.state}`);
      });
  }

  function renderRules(rules) {
    RULES = Object.fromEntries(rules.map((r) => [r.id, r]));
    reconcile($("rules"), rules, (r) => r.id,
      (rule) => {
        const refs = {};
        const id = `rule-${rule.id}`;
        const li = h("li", { class: "rule" },
          h("span", { class: "switch" },
            refs.toggle = h("input", { type: "checkbox", id, role: "switch", onchange: () => onRule(li) }),
            h("span", { class: "track", "aria-hidden": "true" })),
          h("label", { for: id, class: "rule-text" },
            refs.title = h("span", { class: "rule-title" }),
            refs.desc = h("span", { class: "muted small" })));
        li.refs = refs;
        return li;
      },
      (li, r) => {
        if (!li.busy) li.refs.toggle.checked = r.enabled;
        li.refs.title.textContent = r.description || `${r.type} rule ${r.id}`;
        const where = ROOM_NAMES[r.room_id] || r.room_id;
        const origin = r.source === "profile" ? "from the grow profile" : "your rule";
        li.refs.desc.textContent = `${deviceName(r.actuator, false)} in ${where} · ${origin}${r.enabled ? "" : " · off: automation ignores it"}`;
        setClass(li, "rule", r.enabled ? "" : "disabled");
      });
  }

  async function onRule(li) {
    const rule = li.item;
    const enabled = li.refs.toggle.checked;
    li.busy = true;
    const done = await act(`rule “${rule.description || rule.id}” ${enabled ? "on" : "off"}`, () =>
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
        li.refs.meta.textContent = `${fmtAgo(i.received_at)} · ${i.topic} · ${i.size} bytes`;
        li.refs.meta.title = `${fmtFull(i.received_at)}: ${i.preview}`;
      });
  }

  function renderDevices(devices) {
    DEVICES = Object.fromEntries(devices.map((d) => [d.id, d]));
    const offline = devices.filter((d) => !d.status.online).length;
    $("devices-summary").textContent = devices.length === 0 ? "No devices in the config."
      : offline === 0 ? `All ${devices.length} devices online.` : `${offline} of ${devices.length} devices offline.`;
    reconcile($("devices"), devices, (d) => d.id,
      () => {
        const refs = {};
        const li = h("li", { class: "device" },
          h("div", { class: "device-head" },
            refs.name = h("span", { class: "act-name" }),
            refs.online = h("span", { class: "pill" })),
          refs.detail = h("div", { class: "muted small" }),
          refs.esphome = h("a", { class: "small esphome-download", download: "" }, "ESPHome node file"));
        li.refs = refs;
        return li;
      },
      (li, d) => {
        li.refs.name.textContent = deviceName(d.id);
        li.refs.name.title = d.id;
        li.refs.esphome.href = `/api/devices/${encodeURIComponent(d.id)}/esphome.yaml`;
        li.refs.esphome.title = `Download ${d.id}.yaml: flash it with ESPHome (it holds the device's password)`;
        const st = d.status;
        li.refs.online.textContent = st.online ? "online" : "offline";
        setClass(li.refs.online, "pill", st.online ? "on" : "offline");
        const parts = [ROOM_NAMES[d.room_id] || d.room_id];
        parts.push(st.last_seen ? `last heard ${fmtAgo(st.last_seen)}` : "never heard from");
        if (st.state && st.state.battery_v !== undefined && st.state.battery_v !== null) {
          parts.push(`battery ${fmtValueOf("battery_v", st.state.battery_v)}`);
        }
        if (st.rssi_dbm !== null && st.rssi_dbm !== undefined) parts.push(`signal ${Math.round(st.rssi_dbm)} dBm`);
        if (st.uptime_s) parts.push(`up ${fmtDuration(st.uptime_s)}`);
        if (st.firmware) parts.push(`firmware ${st.firmware}`);
        li.refs.detail.textContent = parts.join(" · ");
        li.refs.detail.title = st.last_seen ? fmtFull(st.last_seen) : "";
      });
  }

  // ---- polling ----
  async function refresh() {
    try {
      await loadVocabulary();
      const [rooms, devices, alerts, commands, rules, quarantine, health] = await Promise.all([
        api("/api/rooms"),
        api("/api/devices"),
        api("/api/alerts?active=1&limit=20"),
        api("/api/commands?limit=15"),
        api("/api/rules"),
        api("/api/quarantine?limit=5"),
        fetch("/health", { credentials: "same-origin" }).then((r) => r.json()),
      ]);
      lastRooms = rooms;
      ROOM_NAMES = Object.fromEntries(rooms.map((r) => [r.id, r.name]));
      RULES = Object.fromEntries(rules.map((r) => [r.id, r]));
      renderDevices(devices);
      reconcile($("rooms"), rooms, (r) => r.id, createRoom, updateRoom);
      renderAlerts(alerts);
      renderCommands(commands);
      renderRules(rules);
      renderQuarantine(quarantine);
      const now = new Date();
      const time = `${clock(now)}:${pad(now.getSeconds())}`;
      if (health.broker_connected) setStatus("ok", `working · updated ${time}`);
      else setStatus("warn", `MQTT broker not connected · updated ${time}`);
      $("about").textContent = `smartfarm edge ${health.version || ""} · farm ${health.farm_id || ""}`;
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
      const state = await api("/api/session/state");
      if (state.logged_in) showApp();
      else showLogin();
    } catch (err) {
      setStatus("bad", `edge not answering (${err.message})`);
      showLogin();
    }
  });
})();
