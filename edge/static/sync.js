// Cloud sync panel of the edge page, for whoever installs or looks after the Pi: whether this
// edge reaches its cloud, what waits here to go up (and since when), the last upload and the last
// error, whether the cloud's commands channel is open, and the interval a busy cloud asks readings
// to gather for. Nothing is lost while the cloud is away: the panel says so. Reads GET /api/stats
// (its "sync" part, see edge/uplink.py sync_progress).
"use strict";

(() => {
  const POLL_MS = 5000;
  const CLOCK_WARN_S = 60;  // as the uplink's log warning (edge/uplink.py CLOCK_WARN_S)
  const BACKLOG_WARN_S = 120;  // older than this waiting: a backlog, not the next batch
  const $ = (id) => document.getElementById(id);
  const { h, ago, duration } = window.smartfarmDom;  // dom.js

  function count(n, exact) {
    return `${exact ? "" : "about "}${n.toLocaleString()} record${n === 1 ? "" : "s"}`;
  }

  // {level, text}: the one line that says how the sync is doing.
  function verdict(sync) {
    if (!sync.enabled) {
      return { level: "", text: "Not linked to a cloud: this edge runs the farm on its own." };
    }
    const waiting = sync.backlog_records || 0;
    const kept = waiting
      ? ` ${count(waiting, sync.backlog_exact)} wait here, kept until the cloud has them.` : "";
    if (sync.failures_in_row > 0) {
      const since = sync.last_success_at ? `last upload ${ago(sync.last_success_at)}` : "never uploaded";
      return { level: "bad", text: `Cannot reach the cloud (${since}).${kept}` };
    }
    if (!sync.last_success_at) {
      return { level: "warn", text: `Connecting to the cloud…${kept}` };
    }
    if (waiting && (sync.oldest_unsent_age_s || 0) > BACKLOG_WARN_S) {
      return { level: "warn", text: `Catching up: ${count(waiting, sync.backlog_exact)} waiting,`
        + ` the oldest from ${ago(sync.oldest_unsent_at)}.` };
    }
    return { level: "ok", text: "Up to date with the cloud." };
  }

  function channel(down, sync) {
    if (sync.transport === "aws-iot") {
      return sync.connected ? "connected (AWS IoT)" : `not connected (AWS IoT)${
        sync.connection_error ? `: ${sync.connection_error}` : ""}`;
    }
    if (!down) return "";
    if (down.mode === "stream") {
      return `open${down.connected_since ? ` since ${ago(down.connected_since)}` : ""}`;
    }
    if (down.mode === "poll") return "by polling: the live stream failed, the edge retries it";
    return down.last_error ? `reconnecting: ${down.last_error}` : "connecting…";
  }

  function facts(sync) {
    if (!sync.enabled) return [];
    const down = sync.downlink;
    const rows = [
      ["Cloud", sync.cloud || ""],
      ["Last upload", sync.last_success_at ? ago(sync.last_success_at) : "never"],
      ["Waiting to upload", sync.backlog_records
        ? `${count(sync.backlog_records, sync.backlog_exact)}, the oldest from ${ago(sync.oldest_unsent_at)}`
        : "nothing"],
      ["Commands from the cloud", channel(down, sync)],
    ];
    if (down && down.config_version) rows.push(["Cloud settings", `version ${down.config_version}`]);
    if (sync.failures_in_row > 0 && sync.last_error) {
      rows.push(["Last error", `${sync.last_error} (${ago(sync.last_error_at)}, `
        + `${sync.failures_in_row} attempt${sync.failures_in_row === 1 ? "" : "s"} in a row)`]);
    }
    if (sync.batch_interval_asked_s) {
      rows.push(["Cloud is busy", `it asks readings to gather ${duration(sync.batch_interval_asked_s)}`
        + " before each upload; commands, acks and alerts still go at once"]);
    }
    const offset = sync.clock_offset_s;
    if (offset !== null && offset !== undefined && Math.abs(offset) > CLOCK_WARN_S) {
      rows.push(["Clock", `this edge's clock is ${duration(Math.abs(offset))} `
        + `${offset > 0 ? "behind" : "ahead of"} the cloud's: check its time source (NTP)`]);
    }
    return rows.filter(([, value]) => value);
  }

  function render(sync) {
    const { level, text } = verdict(sync);
    const state = $("sync-state");
    state.dataset.level = level || "off";
    $("sync-dot").className = `dot ${level}`;
    $("sync-text").textContent = text;
    $("sync-facts").replaceChildren(...facts(sync).flatMap(([term, value]) =>
      [h("dt", { text: term }), h("dd", { text: value })]));
  }

  let busy = false;
  async function refresh() {
    const app = $("app");
    if (!app || app.hidden || busy) return;
    busy = true;
    try {
      const resp = await fetch("/api/stats", { credentials: "same-origin" });
      if (resp.status === 401) return;
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      render((await resp.json()).sync || { enabled: false });
    } catch (err) {
      $("sync-dot").className = "dot";
      $("sync-text").textContent = `Sync state unknown: the edge did not answer (${err.message}).`;
    } finally {
      busy = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    refresh();
    setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
  });
})();
