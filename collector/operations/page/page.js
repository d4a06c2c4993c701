// The collector's live page. Reads GET /status once, then the same JSON from GET /events
// (server-sent events, at most one a second). Renders with textContent only: device strings
// and serials are data, never markup. No library, no build step, nothing from the internet.
"use strict";

(() => {
  const STALE_AFTER_S = 5; // no event for this long: say the picture is old
  let advice = {}; // error code -> {what, check}, from page/advice.json
  let snapshot = null; // the last /status
  let receivedAt = 0; // performance.now() when it arrived
  let source = null;

  const $ = (id) => document.getElementById(id);

  // h("div", {class: "x", "data-device": "t1"}, "text", child, ...)
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) el.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  // Replaces an element's children, leaving out null/false ones (replaceChildren would show
  // them as the text "null").
  function fill(el, ...children) {
    el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  // ---------------------------------------------------------------- time, in words
  // Ages are taken against the collector's clock (its start + uptime), not the tablet's.
  function serverNow() {
    if (!snapshot || !snapshot.collector) return Date.now() / 1000;
    const c = snapshot.collector;
    return c.started_ts + c.uptime_s + (performance.now() - receivedAt) / 1000;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} days`;
  }

  function ago(ts) {
    if (ts === null || ts === undefined) return "never";
    return `${duration(serverNow() - ts)} ago`;
  }

  function clock(ts) {
    if (ts === null || ts === undefined) return "–";
    const d = new Date(ts * 1000);
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    return d.toDateString() === new Date(serverNow() * 1000).toDateString()
      ? time
      : `${d.toLocaleDateString()} ${time}`;
  }

  function number(value) {
    if (typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString();
      return String(Number(value.toPrecision(7)));
    }
    if (typeof value === "boolean") return value ? "true (1)" : "false (0)";
    if (value === null || value === undefined) return "–";
    return String(value);
  }

  // A state as a badge: symbol + word + colour, never colour alone.
  const MARK = { ok: "✔", bad: "✖", warn: "⚠", none: "–" };
  function badge(kind, text, attrs) {
    return h("span", { class: `badge ${kind}`, ...(attrs || {}) }, `${MARK[kind]} ${text}`);
  }

  // ---------------------------------------------------------------- errors, in plain words
  // "timeout: read timed out" or "illegal_data_address, timeout" -> "timeout"
  function errorCode(text) {
    if (!text) return null;
    const head = String(text).split(/[:,]/)[0].trim();
    return head in advice ? head : null;
  }

  // A current problem: what happened, what to check, the raw error. A past one: one line.
  function problem(code, raw, when, current) {
    const a = code ? advice[code] : null;
    if (!current) {
      return h("div", { class: "problem old", "data-problem": code || "unknown" },
        h("p", {}, `Last problem ${when}: ${a ? a.what : raw}`, a ? h("span", { class: "mono muted" }, ` (${code})`) : null));
    }
    return h(
      "div",
      { class: "problem", "data-problem": code || "unknown" },
      h("p", {}, h("strong", {}, "Problem: "), a ? a.what : raw),
      a ? h("p", {}, h("strong", {}, "Check: "), a.check) : null,
      a && raw ? h("p", { class: "mono muted" }, raw) : null,
    );
  }

  function ms(value) {
    if (typeof value !== "number") return "–";
    return value < 10 ? `${value.toFixed(1)} ms` : `${Math.round(value).toLocaleString()} ms`;
  }

  // ---------------------------------------------------------------- header
  function renderHeader(s) {
    const c = s.collector || {};
    $("collector-id").textContent = `Collector ${c.id || ""}`;
    $("where").textContent = [c.site, c.line, c.version && `v${c.version}`].filter(Boolean).join(" · ");
    document.title = `${c.id || "Collector"}: live`;
    const health = s.health || { status: "unknown", reasons: [] };
    const ok = health.status === "ok";
    const el = $("health");
    el.className = `badge ${ok ? "ok" : "warn"}`;
    el.textContent = ok ? `${MARK.ok} Collecting: all OK` : `${MARK.warn} Needs attention`;
    const devices = Object.values(s.devices || {});
    const up = devices.filter((d) => d.connected).length;
    fill($("summary"), devices.length
      ? badge(up === devices.length ? "ok" : "bad", `${up} of ${devices.length} devices connected`)
      : null);
    const reasons = $("reasons");
    fill(reasons, ...(health.reasons || []).map((r) => h("li", {}, r)));
    reasons.hidden = !(health.reasons || []).length;
  }

  function renderLive() {
    const el = $("live");
    if (!snapshot) return;
    const age = (performance.now() - receivedAt) / 1000;
    const lost = !source || source.readyState === EventSource.CLOSED || age > STALE_AFTER_S;
    fill(el,
      lost
        ? badge("bad", `Live updates lost: showing data from ${clock(serverNow() - age)}, retrying`)
        : badge("ok", "Live"),
      lost ? "" : h("span", { class: "muted" }, ` updated ${duration(age)} ago`),
    );
  }

  // ---------------------------------------------------------------- stations
  const VERDICT = { pass: "ok", fail: "bad" };
  function unitFacts(u) {
    const facts = [];
    const add = (label, value) => {
      if (value !== null && value !== undefined && value !== "") facts.push(h("dt", {}, label), h("dd", {}, value));
    };
    add("Operation", u.operation);
    add("Attempt", u.attempt);
    add("Phase", u.phase);
    add("Work order", u.work_order);
    // Who and what the unit is made with: operator, fixture, cavity, program.
    const made = Object.entries(u.resources || {});
    add("Made with", made.length ? made.map(([kind, value]) => `${kind}: ${value}`).join(", ") : null);
    add("At station", u.time_at_station_s === null || u.time_at_station_s === undefined
      ? null : duration(u.time_at_station_s));
    // The station's live figures since the collector started (/status stations.*.figures).
    const f = u.figures || {};
    const cycle = f.last_cycle_time_s ?? u.cycle_time_s;
    const mean = f.mean_cycle_time_s;
    add("Cycle time", cycle === undefined || cycle === null ? null
      : `${duration(cycle)}${typeof mean === "number" ? `, mean ${duration(mean)}` : ""}`
        + `${u.takt_s ? ` (takt ${duration(u.takt_s)})` : ""}`
        + `${u.takt_s && cycle > u.takt_s ? " ⚠ over takt" : ""}`);
    const fpy = f.first_pass_yield ?? u.first_pass_yield;
    add("First pass yield", typeof fpy === "number" ? `${(100 * fpy).toFixed(1)} %` : null);
    add("Units", typeof f.units === "number" && f.units
      ? `${f.units} (${f.passes || 0} pass, ${f.fails || 0} fail, ${f.retests || 0} retests)` : null);
    const last = u.last_unit;
    if (last) {
      const kind = VERDICT[last.verdict] || "warn";
      add("Last unit", h("span", {}, `${last.serial} `, badge(kind, String(last.verdict).toUpperCase()),
        h("span", { class: "muted" }, ` ${ago(last.end_ts)}`)));
    }
    const verdicts = u.last_verdicts || u.recent_verdicts;
    if (Array.isArray(verdicts) && verdicts.length) {
      add("Last verdicts", h("span", {}, ...verdicts.slice(-10).map((v) => {
        const verdict = typeof v === "object" && v ? v.verdict : v;
        return badge(VERDICT[verdict] || "warn", String(verdict).toUpperCase());
      })));
    }
    return h("dl", { class: "facts" }, facts);
  }

  function unitBlock(u, name, attrs) {
    // After its verdict a unit may still be in the fixture: then it is present, not tested.
    const serial = u.unit_serial || u.present_serial;
    return h("div", attrs,
      h("header", {}, h("h3", {}, name)),
      h("div", { class: serial ? "serial" : "serial empty", "data-field": "serial" },
        serial || "No unit at the station"),
      unitFacts(u),
    );
  }

  function renderStations(s) {
    const stations = s.stations || {};
    const names = Object.keys(stations);
    if (!names.length) {
      fill($("stations"), h("div", { class: "card muted" }, "No stations configured."));
      return;
    }
    // A rack's slots are stations of their own in /status ("rack-a.slot07" with
    // "station": "rack-a", "slot": 7); they are shown together on the rack's card.
    const racks = {};
    const cards = [];
    for (const name of names) {
      const st = stations[name] || {};
      if (st.slot !== null && st.slot !== undefined && st.station) {
        if (!racks[st.station]) {
          racks[st.station] = { slots: {}, operation: st.operation };
          cards.push([st.station, racks[st.station]]);
        }
        racks[st.station].slots[st.slot] = st;
      } else {
        cards.push([name, st]);
      }
    }
    fill($("stations"), ...cards.map(([name, st]) => {
      const card = unitBlock(st, name, { class: "card", "data-station": name });
      const slots = st.slots;
      const entries = Array.isArray(slots)
        ? slots.map((slot, i) => [slot.name || slot.slot || String(i + 1), slot])
        : Object.entries(slots || {});
      for (const [slot, value] of entries) {
        card.append(unitBlock(value || {}, `Slot ${slot}`, { class: "slots", "data-slot": slot }));
      }
      return card;
    }));
  }

  // ---------------------------------------------------------------- buffer and broker
  function renderBuffer(b) {
    const dropped = (b.dropped_total || 0) + (b.overflow_dropped || 0);
    const used = b.max_readings ? (100 * b.depth) / b.max_readings : 0;
    const kind = b.write_error || dropped ? "bad" : used > 90 ? "warn" : "ok";
    $("buffer").className = `card${kind === "bad" ? " is-bad" : kind === "warn" ? " is-warn" : ""}`;
    fill($("buffer"),
      h("header", {}, h("h3", {}, "Buffer on this PC"),
        badge(kind, kind === "ok" ? "OK" : kind === "warn" ? "Nearly full" : "Data lost or not stored")),
      h("dl", { class: "facts" },
        h("dt", {}, "Readings waiting"), h("dd", { "data-field": "waiting" },
          `${number(b.depth)} (${used.toFixed(used < 1 ? 2 : 0)} % of ${number(b.max_readings)})`),
        h("dt", {}, "Oldest unsent"), h("dd", { "data-field": "oldest" },
          b.oldest_unsent_age_s === null || b.oldest_unsent_age_s === undefined
            ? "nothing waiting" : duration(b.oldest_unsent_age_s)),
        h("dt", {}, "Dropped"), h("dd", { "data-field": "dropped" },
          dropped ? badge("bad", `${number(dropped)} readings dropped`) : "none"),
        b.quarantined_total ? [h("dt", {}, "Refused by broker"), h("dd", {}, number(b.quarantined_total))] : null,
        b.write_error ? [h("dt", {}, "Cannot write"), h("dd", { class: "mono" }, b.write_error)] : null,
      ),
    );
  }

  function renderBroker(m) {
    const kind = m.connected ? "ok" : "bad";
    $("broker").className = `card${m.connected ? "" : " is-bad"}`;
    fill($("broker"),
      h("header", {}, h("h3", {}, "Broker (MQTT)"),
        badge(kind, m.connected ? "Connected" : "Not connected", { "data-field": "broker-state" })),
      h("dl", { class: "facts" },
        h("dt", {}, "Last accepted publish"), h("dd", { "data-field": "last-accepted" },
          m.last_accepted_ts ? `${clock(m.last_accepted_ts)} (${ago(m.last_accepted_ts)})` : "never"),
        h("dt", {}, "Readings delivered"), h("dd", {}, number(m.readings_delivered)),
        m.in_flight ? [h("dt", {}, "Waiting for the broker"), h("dd", {}, `${m.in_flight} message(s)`)] : null,
        m.backlog_until_seq ? [h("dt", {}, "Catching up"), h("dd", {},
          `backlog up to seq ${m.backlog_until_seq}`)] : null,
      ),
      m.last_connect_error
        ? h("div", { class: m.connected ? "problem old" : "problem" },
          h("p", {}, h("strong", {}, m.connected ? "Last error: " : "Error: "), m.last_connect_error),
          m.connected ? null : h("p", {}, h("strong", {}, "Check: "),
            "is the network up and the broker running? Host, port, TLS files and password in the config?"))
        : null,
    );
  }

  // ---------------------------------------------------------------- devices
  const QUALITY = { good: ["ok", "good"], uncertain: ["warn", "uncertain"], bad: ["bad", "bad"] };

  function tagTable(tags) {
    const names = Object.keys(tags || {});
    if (!names.length) return h("p", { class: "muted" }, "No values read yet.");
    return h("table", {},
      h("thead", {}, h("tr", {}, h("th", {}, "Tag"), h("th", {}, "Value"), h("th", {}, "Unit"),
        h("th", {}, "Quality"), h("th", {}, "Read"))),
      h("tbody", {}, names.map((name) => {
        const t = tags[name];
        const [kind, word] = QUALITY[t.quality] || ["warn", t.quality];
        return h("tr", { "data-tag": name },
          h("td", {}, name),
          h("td", { class: "value" }, number(t.value)),
          h("td", {}, t.unit || ""),
          h("td", { class: "q" }, badge(kind, t.error ? `${word}: ${t.error}` : word)),
          h("td", { class: "muted" }, ago(t.ts)));
      })),
    );
  }

  function errorList(errors) {
    const codes = Object.keys(errors || {}).sort((a, b) => errors[b] - errors[a]);
    if (!codes.length) return null;
    return h("table", { "data-field": "errors" },
      h("thead", {}, h("tr", {}, h("th", {}, "Errors"), h("th", {}, "Count"), h("th", {}, "Meaning"))),
      h("tbody", {}, codes.map((code) => h("tr", { "data-error": code },
        h("td", { class: "mono" }, code), h("td", {}, number(errors[code])),
        h("td", {}, advice[code] ? advice[code].what : "")))),
    );
  }

  function renderDevice(name, d) {
    const now = serverNow();
    const lateness = d.poll_start_late_ms;
    const badTags = Object.values(d.tags || {}).filter((t) => t.quality === "bad").length;
    const errorIsCurrent = !d.connected || badTags > 0;
    const kind = d.connected ? (badTags ? "warn" : "ok") : "bad";
    const since = d.state_since_ts
      ? ` since ${clock(d.state_since_ts)} (${duration(now - d.state_since_ts)})` : "";
    const card = h("div", {
      class: `card${kind === "bad" ? " is-bad" : kind === "warn" ? " is-warn" : ""}`,
      "data-device": name,
      "data-connected": d.connected ? "yes" : "no",
    },
      h("header", {}, h("h3", {}, name),
        h("span", { class: "muted" }, [d.protocol, d.station && `station ${d.station}`].filter(Boolean).join(" · "))),
      h("div", { class: "state", "data-field": "state" },
        badge(kind, `${d.connected ? "Connected" : "Not connected"}${since}`)),
      d.last_error && (errorIsCurrent || (d.last_error_ts && now - d.last_error_ts < 600))
        ? problem(errorCode(d.last_error), d.last_error, ago(d.last_error_ts), errorIsCurrent)
        : null,
      h("dl", { class: "facts" },
        h("dt", {}, "Last good poll"), h("dd", { "data-field": "last-good" }, ago(d.last_good_poll_ts)),
        h("dt", {}, "Polls"), h("dd", {}, `${number(d.good_polls)} good of ${number(d.polls)}`
          + (d.skipped_polls ? `, ${number(d.skipped_polls)} skipped` : "")),
        h("dt", {}, "Poll lateness"), h("dd", {}, lateness
          ? `${ms(lateness.p50)} typical, ${ms(lateness.p99)} at worst (p99)` : "–"),
      ),
      errorList(d.errors),
      tagTable(d.tags),
    );
    return card;
  }

  function renderDevices(s) {
    const devices = s.devices || {};
    const names = Object.keys(devices);
    fill($("devices"), ...(names.length
      ? names.map((n) => renderDevice(n, devices[n]))
      : [h("div", { class: "card muted" }, "No devices configured.")]));
  }

  // ---------------------------------------------------------------- wiring
  function render() {
    if (!snapshot) return;
    renderHeader(snapshot);
    renderStations(snapshot);
    renderBuffer(snapshot.buffer || {});
    renderBroker(snapshot.mqtt || {});
    renderDevices(snapshot);
    renderLive();
  }

  let updates = 0;
  function take(s) {
    snapshot = s;
    receivedAt = performance.now();
    render();
    // How many pictures this page has shown (for tests and for a curious technician).
    document.body.dataset.updates = String(++updates);
  }

  function connect() {
    source = new EventSource("events");
    source.addEventListener("status", (event) => take(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      renderLive();
      // The browser retries a dropped stream itself; a refused one (503: too many pages open)
      // it gives up: try again later.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 10000);
    });
  }

  async function start() {
    try {
      advice = await (await fetch("page/advice.json")).json();
    } catch (e) {
      advice = {};
    }
    try {
      take(await (await fetch("status")).json());
    } catch (e) {
      fill($("live"), badge("bad", "Cannot reach the collector, retrying"));
    }
    connect();
    // Ages keep counting between events, and a stream that stopped is said so.
    setInterval(() => {
      if (performance.now() - receivedAt > 1500) render();
      else renderLive();
    }, 1000);
  }

  start();
})();
