/* The search: the filters live in the URL (?serial=...&verdict=...), so a search can be
   bookmarked and shared; the page reads them, fills the form and asks GET /units with the
   same query. The CSV link carries the same query to GET /units.csv. */
"use strict";

(() => {
  const { badge, table, num, call, readFailed, unitLink } = Pages;
  const form = document.getElementById("filters");
  const results = document.getElementById("results");
  const count = document.getElementById("count");
  const csv = document.getElementById("csv");
  const NAMES = ["serial", "work_order", "operation", "verdict", "attempt", "disposition",
                 "deviation", "out_of_spec", "golden", "since", "until", "limit"];

  function fromUrl() {
    const given = new URLSearchParams(location.search);
    const query = new URLSearchParams();
    for (const name of NAMES) {
      const value = (given.get(name) || "").trim();
      if (value) query.set(name, value);
      const input = form.elements.namedItem(name);
      // A time in the URL may carry a zone (Z) that datetime-local cannot show.
      if (input) input.value = input.type === "datetime-local" ? value.replace(/Z$/, "") : value;
    }
    return query;
  }

  function fromForm() {
    const query = new URLSearchParams();
    for (const name of NAMES) {
      const value = (form.elements.namedItem(name).value || "").trim();
      if (value) query.set(name, value);
    }
    return query;
  }

  async function search() {
    const query = fromUrl();
    const text = query.toString();
    csv.href = "/units.csv" + (text ? "?" + text : "");
    count.textContent = "searching…";
    const answer = await call("GET", "/units" + (text ? "?" + text : ""));
    if (!answer.ok) {
      count.textContent = "";
      readFailed(results, answer, search);
      return;
    }
    const rows = answer.body;
    count.textContent = `${rows.length} unit record${rows.length === 1 ? "" : "s"}` +
      (rows.length === Number(query.get("limit") || 1000) ? " (the limit: there may be more)" : "");
    results.replaceChildren(table(
      ["serial", "operation", "station", "attempt", "verdict", "failure code", "start (UTC)",
       "end (UTC)", "cycle time (s)", "work order", "golden"],
      rows.map((u) => [
        unitLink(u.serial), u.operation, u.station, u.attempt, badge(u.verdict),
        u.failure_code, u.start_ts, u.end_ts, num(u.cycle_time_s, 1), u.work_order,
        u.golden ? "★ golden" : "",
      ]),
      { id: "units" },
    ));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = fromForm().toString();
    history.pushState(null, "", "/search" + (text ? "?" + text : ""));
    search();
  });
  document.getElementById("clear").addEventListener("click", () => {
    history.pushState(null, "", "/search");
    search();
  });
  window.addEventListener("popstate", search);
  Pages.guardedLink(csv, "units.csv", (words) => { count.textContent = words; });
  search();
})();
