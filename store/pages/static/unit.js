/* A unit: its genealogy (GET /units/{serial} as JSON), the deviations that concern it, its
   dispositions and remarks, and the forms to add a disposition or a remark. */
"use strict";

(() => {
  const { el, text, badge, table, num, call, readFailed, writeForm, field } = Pages;
  // The serial as it is in the address, still percent-encoded: a serial may hold a "/".
  const raw = location.pathname.replace(/^\/units\//, "");
  const path = "/units/" + raw;
  const serial = decodeURIComponent(raw);
  document.getElementById("title").textContent = "Unit " + serial;
  document.title = "Unit " + serial + " — store";

  function characteristics(list) {
    return el("ul", { class: "notes" }, list.map((c) => el("li", {},
      `${c.name}: ${num(c.last)} [${text(c.lsl)}, ${text(c.usl)}]${c.critical ? " critical" : ""} `,
      c.in_spec === null ? "" : badge(c.in_spec ? "in_spec" : "out_of_spec"))));
  }

  // Which operator, fixture, cavity and program made it (docs/traceability.md), as text.
  function resources(made) {
    return Object.entries(made || {}).map(([k, v]) => `${k}: ${text(v)}`).join(", ");
  }

  function render(unit) {
    const current = document.getElementById("current");
    current.replaceChildren(unit.disposition
      ? el("span", {}, "current disposition: ", badge(unit.disposition, unit.disposition))
      : el("span", { class: "muted" }, "no disposition yet"));
    const ops = unit.operations;
    document.getElementById("operations").replaceChildren(ops.length ? table(
      ["operation", "station", "slot", "attempt", "verdict", "failure code", "start (UTC)",
       "end (UTC)", "cycle time (s)", "readings", "work order", "resources",
       "characteristics [LSL, USL]"],
      ops.map((o) => [o.operation, o.station, o.slot, o.attempt, badge(o.verdict),
                      o.failure_code, o.start_ts, o.end_ts, num(o.cycle_time_s, 1), o.readings,
                      o.work_order, resources(o.resources), characteristics(o.characteristics)]),
      { id: "operations-table" }) : el("p", { class: "muted" }, "No unit record (readings only)."));
    const readings = document.getElementById("readings");
    readings.replaceChildren(`${unit.readings.length} reading${unit.readings.length === 1 ? "" : "s"} while at a station. `);
    if (unit.readings.length) {
      const link = el("a", { href: "/readings.csv?serial=" + encodeURIComponent(serial), id: "readings-csv" },
                      "Readings as CSV");
      readings.append(link);
      Pages.guardedLink(link, "readings-" + serial.replace(/[^A-Za-z0-9._-]/g, "_") + ".csv", (words) => {
        const message = el("p", {});
        Pages.say(message, "bad", words);
        readings.append(message);
      });
    }
    document.getElementById("deviations").replaceChildren(unit.deviations.length ? table(
      ["id", "state", "severity", "description", "operation / station", "action", "recorded"],
      unit.deviations.map((d) => [
        d.id, badge(d.open ? "open" : "closed"), badge(d.severity),
        el("span", { class: "prose" }, d.description),
        [d.operation, d.station].filter((x) => x).join(" / "),
        el("span", { class: "prose" }, d.action), `${d.at} by ${d.person}`]),
      { id: "deviations-table" }) : el("p", { class: "muted" }, "None."));
    document.getElementById("dispositions").replaceChildren(unit.dispositions.length ? table(
      ["when (UTC)", "disposition", "detail", "reason", "by"],
      unit.dispositions.map((d) => [d.at, badge(d.disposition, d.disposition),
        Object.entries(d.detail).map(([k, v]) => `${k}: ${text(v)}`).join(", "),
        el("span", { class: "prose" }, text(d.reason)), d.person]),
      { id: "dispositions-table" }) : el("p", { class: "muted" }, "None yet."));
    document.getElementById("remarks").replaceChildren(unit.remarks.length ? table(
      ["when (UTC)", "author", "remark", "typed by"],
      unit.remarks.map((r) => [r.at, r.author, el("span", { class: "prose" }, r.text), r.person]),
      { id: "remarks-table" }) : el("p", { class: "muted" }, "None yet."));
  }

  async function load() {
    const answer = await call("GET", path);
    const problem = document.getElementById("problem");
    if (!answer.ok) {
      readFailed(problem, answer, load);
      return;
    }
    problem.replaceChildren();
    render(answer.body);
  }

  const DETAIL = { field_test: ["site", "user"], certification: ["lab", "test", "destructive"],
                   golden: ["location"] };
  writeForm(document.getElementById("dispose"), path + "/dispositions", (data) => {
    const disposition = data.get("disposition");
    const detail = {};
    for (const key of DETAIL[disposition] || []) {
      const value = field(data, key);
      if (value !== undefined) detail[key] = key === "destructive" ? value === "yes" : value;
    }
    return { disposition, detail, reason: field(data, "reason") || null,
             function: field(data, "function") };
  }, (body) => `disposition ${body.disposition} recorded at ${body.at} by ${body.person}`);
  writeForm(document.getElementById("remark"), path + "/remarks",
    (data) => ({ author: field(data, "author") || "", text: field(data, "text") || "" }),
    (body) => `remark recorded at ${body.at}`);
  for (const form of document.querySelectorAll("form.write")) form.addEventListener("written", load);
  load();
})();
