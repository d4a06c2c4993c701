"""The demo's pilot record (deploy/demo.sh): what the people around the line do in the store,
through its HTTP API, each with their own token (docs/pilot-record.md).

``python -m collector.demo.record open URL PROTOCOL TOKENS`` (before the line starts): Quality
opens the run with the demo's protocol, and Quality, Production and Engineering approve it, so
the exit criteria are fixed before the first unit. Prints the run's id.

``python -m collector.demo.record finish URL RUN TOKENS`` (after the line stopped and the store
holds its data): waits for the deviation the operator recorded on the line PC to reach the
store; allocates units (a golden sample, two to field tests with two users, one to a
certification lab); the three functions sign, Engineering with a no-go and its reason.
Prints what was done and the run's state.

``TOKENS`` is a folder with one token file per function (quality, production, engineering),
the files the store's config names. The store's HTTP API only: this module imports nothing
of the store (the standard library's urllib).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

FUNCTIONS = ("Quality", "Production", "Engineering")
#: How long ``finish`` waits for the line's deviation to reach the store.
DEVIATION_WAIT_S = 30.0
#: How long a request waits for a store that is starting.
START_WAIT_S = 30.0


class Store:
    def __init__(self, url: str, tokens: Path) -> None:
        self.url = url.rstrip("/")
        self.tokens = {f: (tokens / f.lower()).read_text().strip() for f in FUNCTIONS}

    def call(self, method: str, path: str, body: Any = None, function: str = "Quality") -> Any:
        data = None
        headers = {"Authorization": f"Bearer {self.tokens[function]}", "Accept": "application/json"}
        if isinstance(body, str):
            data, headers["Content-Type"] = body.encode(), "application/yaml"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(  # noqa: S310 - the demo's own store, on loopback
            self.url + path, data=data, headers=headers, method=method
        )
        # The store may still be starting (its port not open yet, its schema being made).
        deadline = time.monotonic() + START_WAIT_S
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                    return json.loads(answer.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code < 500 or time.monotonic() > deadline:
                    raise SystemExit(f"demo: {method} {path}: {exc.code} {detail}") from None
            except urllib.error.URLError as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"demo: {method} {path}: {exc.reason}") from None
            time.sleep(0.2)


def open_run(store: Store, protocol: Path) -> int:
    run = store.call("POST", "/runs", protocol.read_text(encoding="utf-8"))
    for function in FUNCTIONS:
        store.call(
            "POST",
            f"/runs/{run['id']}/approvals",
            {"function": function, "decision": "approve", "reason": "exit criteria reviewed"},
            function,
        )
    print(
        f"demo: pilot run {run['id']} opened (protocol version {run['version']}, SHA-256 "
        f"{run['sha256'][:12]}...) and approved by {', '.join(FUNCTIONS)} before the line "
        "starts",
        flush=True,
    )
    return int(run["id"])


def finish(store: Store, run_id: int) -> str:
    deadline = time.monotonic() + DEVIATION_WAIT_S
    report = store.call("GET", f"/runs/{run_id}/report?format=json")
    while not report["deviations"]["count"] and time.monotonic() < deadline:
        time.sleep(0.5)
        report = store.call("GET", f"/runs/{run_id}/report?format=json")
    for d in report["deviations"]["items"]:
        units = ", ".join(d["serials"])
        said = f"{d['severity']}, recorded by {d['who']} at {d['station']} ({d['person']})"
        print(f"demo: deviation {d['id']} in the store: {said}, units {units}", flush=True)
    query = urllib.parse.urlencode(
        {"serial": "PILOT-*", "operation": "functional-test", "verdict": "pass", "limit": 100}
    )
    passed = list(dict.fromkeys(u["serial"] for u in store.call("GET", f"/units?{query}")))
    plan = [
        ("golden", {"location": "QA cabinet, shelf 2"}, "reference for the next builds"),
        ("field_test", {"site": "Customer A", "user": "A. User"}, "field test, first site"),
        ("field_test", {"site": "Customer B", "user": "B. User"}, "field test, second site"),
        (
            "certification",
            {"lab": "Demo EMC lab", "test": "ESD, EN 61000-4-2", "destructive": False},
            "EMC pre-scan",
        ),
    ]
    for serial, (disposition, detail, reason) in zip(passed, plan, strict=False):
        store.call(
            "POST",
            f"/units/{urllib.parse.quote(serial, safe='')}/dispositions",
            {"disposition": disposition, "detail": detail, "reason": reason},
        )
        print(f"demo: {serial} allocated to {disposition}", flush=True)
    signatures = [
        ("Quality", "go", "Reviewed the report and the deviation; accepted for this demo run"),
        ("Production", "go", "The line ran at takt; the deviation was contained on the line"),
        (
            "Engineering",
            "no-go",
            "Too few units for a capability claim: run the full pilot (30 units) first",
        ),
    ]
    for function, decision, reason in signatures:
        signed = store.call(
            "POST",
            f"/runs/{run_id}/signoffs",
            {"function": function, "decision": decision, "reason": reason},
            function,
        )
        extra = " (an override of the report's decision)" if signed["override"] else ""
        print(f"demo: {signed['person']} signed {decision} for {function}{extra}", flush=True)
    state = store.call("GET", f"/runs/{run_id}")
    print(f"demo: the run's state: {state['state']}", flush=True)
    return str(state["state"])


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] not in ("open", "finish"):
        print("usage: python -m collector.demo.record open URL PROTOCOL TOKENS | "
              "finish URL RUN TOKENS", file=sys.stderr)  # fmt: skip
        return 2
    store = Store(argv[1], Path(argv[3]))
    if argv[0] == "open":
        print(open_run(store, Path(argv[2])))
    else:
        finish(store, int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
