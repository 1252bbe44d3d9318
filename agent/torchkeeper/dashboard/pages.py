"""The dashboard's pages: server-rendered HTML (no script at all: actions are forms that post
back with the session's CSRF token), charts as inline SVG. Pure: data in, a string out; every
value that came from a file or a user is escaped.

One stylesheet (style.css, served from the wheel) makes it legible at 1280x800 and in a
phone-width window (tables scroll sideways, the layout is one column)."""

from __future__ import annotations

import html
import time
from urllib.parse import quote

from ..engine.records import JsonObject

STATE_WORDS = {"patched": "overlay in place", "drifted": "overlay undone", "stock": "stock",
               "incompatible": "bundle does not fit", "missing": "environment missing"}


def e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _form(action: str, label: str, csrf: str, extra: dict | None = None, cls: str = "") -> str:
    fields = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in (extra or {}).items())
    return (f'<form method="post" action="{e(action)}" class="inline">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">{fields}'
            f'<button type="submit" class="{e(cls)}">{e(label)}</button></form>')


def layout(title: str, body: str, csrf: str, paused: bool | None = None) -> str:
    nav = " ".join(f'<a href="{h}">{e(t)}</a>' for h, t in
                   (("/", "Targets"), ("/bundles", "Bundles"), ("/found", "Found installs"),
                    ("/settings", "Settings")))
    banner = ('<p class="banner">Auto re-apply is paused. ' + _form("/api/pause", "Resume", csrf, {"paused": "0"})
              + "</p>") if paused else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="csrf-token" content="{e(csrf)}">'
            f'<title>{e(title)} - torchkeeper</title><link rel="stylesheet" href="/static/style.css"></head>'
            f'<body><header><strong>torchkeeper</strong> <nav>{nav}</nav></header>{banner}'
            f'<main><h1>{e(title)}</h1>{body}</main></body></html>')


def _last(events: list[JsonObject], kind: str, target: str) -> JsonObject | None:
    for ev in reversed(events):
        if ev.get("event") == kind and ev.get("target") == target:
            return ev
    return None


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if isinstance(ts, (int, float)) else ""


def targets_page(status: JsonObject, events: list[JsonObject], csrf: str) -> str:
    rows = []
    for t in status["targets"]:
        n = t["name"]
        rep = _last(events, "repaired", n)
        bench = t.get("last_bench") or {}
        applied = (t.get("applied") or {}).get("bundle_name")
        chosen = (t.get("bundle") or {}).get("name")
        ratio = bench.get("ratio")
        gain = f"x{ratio:.2f}" if isinstance(ratio, (int, float)) else ""
        actions = "".join(_form(f"/api/targets/{quote(n, safe='')}/{a}", label, csrf)
                          for a, label in (("reapply", "Reapply"), ("revert", "Revert to stock"),
                                           ("check", "Check now")))
        rows.append(
            f'<tr class="state-{e(t.get("state"))}"><td><a href="/targets/{e(quote(n, safe=""))}">{e(n)}</a></td>'
            f'<td class="state">{e(STATE_WORDS.get(t.get("state"), t.get("state")))}</td>'
            f'<td>{e(t.get("torch_version"))}<br><small>CUDA {e(t.get("torch_cuda"))}</small></td>'
            f'<td>{e(t.get("cudnn_stock"))} &rarr; {e(t.get("cudnn_now"))}</td>'
            f'<td>{e(chosen)}{"" if applied in (None, chosen) else " (applied: " + e(applied) + ")"}</td>'
            f'<td>{e(_when(rep.get("ts"))) if rep else ""}<br>'
            f'{"<small>" + e(round(rep["latency"] * 1000)) + " ms</small>" if rep and isinstance(rep.get("latency"), (int, float)) else ""}</td>'
            f'<td>{e(gain)}</td>'
            f'<td>{e((t.get("standby") or {}).get("state"))}</td><td class="actions">{actions}</td></tr>')
    table = ('<div class="scroll"><table><thead><tr><th>target</th><th>state</th><th>torch</th>'
             '<th>cuDNN stock &rarr; now</th><th>bundle</th><th title="from the installer\'s last write">last repair</th>'
             '<th>gain</th><th>standby</th><th></th></tr></thead><tbody>' + "".join(rows)
             + '</tbody></table></div>') if rows else \
        "<p>No targets yet: add one with <code>torchkeeper target add PATH</code>, or Manage a found install.</p>"
    d = status.get("driver") or {}
    driver = (f"driver {e(d.get('version'))}, CUDA {e(d.get('cuda'))}" if d.get("state") == "ok"
              else e(d.get("message") or "driver not checked"))
    times = [ev["latency"] for ev in events if ev.get("event") == "repaired"
             and isinstance(ev.get("latency"), (int, float))][-30:]
    chart = ("<h2>Repair times, last " + str(len(times)) + "</h2>"
             + bars([t * 1000 for t in times], unit="ms", label="time from the installer's last write to verified"))\
        if times else ""
    drift = timeline(events)
    return table + f'<p class="driver">{driver}</p>' + chart + drift


def target_page(t: JsonObject, plan: JsonObject | None, plan_error: str | None, events: list[JsonObject],
                csrf: str, way_back: list[JsonObject] | None = None) -> str:
    n = t["name"]
    parts = [f'<p>{e(t["site_packages"])}</p><p class="state state-{e(t.get("state"))}">'
             f'{e(STATE_WORDS.get(t.get("state"), t.get("state")))}</p>']
    if plan is not None:
        steps = "".join(f'<tr><td>{e(s.get("rel") or s.get("key"))}</td><td>{e(s.get("action"))}</td>'
                        f'<td>{e(s.get("prior"))}</td><td>{e(s.get("stock_source"))}</td></tr>'
                        for s in plan.get("files", []))
        reasons = "".join(f'<li class="{e(r.get("level"))}"><strong>{e(r.get("level"))}</strong> '
                          f'[{e(r.get("rule"))}] {e(r.get("message"))}'
                          f'{"<br><small>hint: " + e(r["hint"]) + "</small>" if r.get("hint") else ""}</li>'
                          for r in plan.get("reasons", []))
        table = (f'<div class="scroll"><table><thead><tr><th>file</th><th>action</th><th>now</th>'
                 f'<th>stock hash from</th></tr></thead><tbody>{steps}</tbody></table></div>') if steps \
            else "<p>Nothing to change: every file of the bundle is in place.</p>"
        parts.append(f'<h2>Plan: bundle {e(plan.get("bundle_name"))} &mdash; {e(plan.get("verdict"))}</h2>'
                     f'{table}<ul class="reasons">{reasons}</ul>')
    elif plan_error:
        parts.append(f'<p class="note">No plan: {e(plan_error)}</p>')
    applied = t.get("applied")
    if applied:
        rows = "".join(
            f'<tr><td>{e(w["rel"])}</td><td>{e(w["prior"])}</td>'
            f'<td>{"same bytes as stock: nothing to keep" if w["same_as_stock"] else e(w["backup"] or "none")}</td>'
            f'<td>{"" if w["same_as_stock"] or not w["backup"] else ("kept" if w["present"] else "<strong>missing</strong>")}</td></tr>'
            for w in (way_back or []))
        parts.append(f'<h2>Way back</h2><p>{e(applied.get("files"))} files replaced by bundle '
                     f'{e(applied.get("bundle_name"))} on {e(applied.get("at"))}; Revert puts back the bytes '
                     f'kept here:</p>' + (f'<div class="scroll"><table><thead><tr><th>file</th><th>was</th>'
                                          f'<th>backup</th><th></th></tr></thead><tbody>{rows}</tbody></table></div>'
                                          if rows else ""))
    parts.append("".join(_form(f"/api/targets/{quote(n, safe='')}/{a}", label, csrf)
                         for a, label in (("reapply", "Reapply"), ("revert", "Revert to stock"),
                                          ("check", "Check now"))))
    mine = [ev for ev in events if ev.get("target") == n][-40:]
    items = "".join(f'<li><time>{e(ev.get("time"))}</time> {e(ev.get("event"))}'
                    f'{" &mdash; " + e(ev.get("decision") or ev.get("why") or ev.get("message") or "") if (ev.get("decision") or ev.get("why") or ev.get("message")) else ""}</li>'
                    for ev in reversed(mine))
    parts.append(f"<h2>Events</h2><ol class=\"events\">{items or '<li>none yet</li>'}</ol>")
    bench = t.get("last_bench")
    if bench and isinstance(bench.get("ratio"), (int, float)):
        parts.append(f"<h2>Measured gain: x{float(bench['ratio']):.2f}</h2>"
                     f"<p><small>{e(bench.get('gpu'))}, {e(bench.get('time'))}</small></p>"
                     + workloads(bench.get("parts") or {}, str(bench.get("bundle_name") or "overlay")))
    return "".join(parts)


def bundles_page(bundles: list[JsonObject], status: JsonObject) -> str:
    users: dict[str, list[str]] = {}
    for t in status["targets"]:
        for bid in {(t.get("bundle") or {}).get("id"), (t.get("applied") or {}).get("bundle")} - {None}:
            users.setdefault(bid, []).append(t["name"])
    rows = "".join(
        f'<tr><td>{e(b.get("name"))}</td><td>{e(b.get("platform"))}</td><td>CUDA {e(b.get("cuda"))}, '
        f'cuDNN {e(b.get("cudnn"))}</td><td>{e(len(b.get("files") or []))} files: '
        f'{e(", ".join(f.get("name", "") for f in (b.get("files") or [])[:6]))}</td>'
        f'<td>{e(", ".join(str(s) for s in (b.get("sources") or [])[:3]))}</td>'
        f'<td>{e(", ".join(sorted(set(users.get(b.get("id"), [])))))}</td></tr>' for b in bundles)
    return ('<div class="scroll"><table><thead><tr><th>bundle</th><th>platform</th><th>versions</th><th>holds</th>'
            f'<th>came from</th><th>used by</th></tr></thead><tbody>{rows}</tbody></table></div>') if bundles \
        else "<p>No bundles yet: <code>torchkeeper bundle fetch --for TARGET</code> or <code>bundle create</code>.</p>"


def found_page(found: list, csrf: str) -> str:
    if not found:
        return "<p>No unmanaged torch installs found.</p>"
    rows = "".join(f'<tr><td>{e(f.label)}</td><td>{e(f.path)}</td><td>'
                   + _form("/api/manage", "Manage", csrf, {"path": f.path})
                   + (_form("/api/manage", "Manage, get it and apply", csrf, {"path": f.path, "fetch": "1"})
                      if f.suggestion else "") + f'<small>{e(f.suggestion or "")}</small></td></tr>'
                   for f in found)
    return f'<div class="scroll"><table><tbody>{rows}</tbody></table></div>'


def settings_page(view, csrf: str, notifications: bool | None = None) -> str:
    paused = bool(getattr(view, "paused", False))
    auto = getattr(view, "autostart", None)
    rows = [f'<tr><td>Auto re-apply</td><td>{"paused" if paused else "on"}</td><td>'
            + _form("/api/pause", "Resume" if paused else "Pause", csrf, {"paused": "0" if paused else "1"})
            + "</td></tr>"]
    if auto is not None:
        rows.append(f'<tr><td>Start at login</td><td>{"on" if auto else "off"}</td><td>'
                    + _form("/api/autostart", "Turn off" if auto else "Turn on", csrf,
                            {"enabled": "0" if auto else "1"}) + "</td></tr>")
    if notifications is not None:
        rows.append(f'<tr><td>Notifications</td><td>{"on" if notifications else "off"}</td><td>'
                    + _form("/api/notifications", "Turn off" if notifications else "Turn on", csrf,
                            {"enabled": "0" if notifications else "1"}) + "</td></tr>")
    return ("<table><tbody>" + "".join(rows) + "</tbody></table>"
            "<p><small>The rest: config.toml (<code>torchkeeper doctor</code> says where); "
            "the agent reads it again when it changes.</small></p>")


def bars(values: list[float], unit: str, label: str, names: list[str] | None = None,
         width: int = 640, height: int = 180) -> str:
    """A bar chart as inline SVG, scaled to the largest value, with that value and the median
    written out (what people read off a chart)."""
    if not values:
        return ""
    top = max(values) or 1.0
    n = len(values)
    gap, pad = 4, 28
    bw = min(40.0, max(2.0, (width - pad - gap * n) / n))   # one bar stays a bar, not a block
    rects = []
    for i, v in enumerate(values):
        h = (height - 2 * pad) * v / top
        x, y = pad + i * (bw + gap), height - pad - h
        name = names[i] if names and i < len(names) else f"#{i + 1}"
        rects.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}"><title>{e(name)}: '
                     f'{v:.3g} {e(unit)}</title></rect>')
        if names:
            rects.append(f'<text x="{x + bw / 2:.1f}" y="{height - 8}" text-anchor="middle">{e(name)}</text>')
    med = sorted(values)[n // 2]
    return (f'<figure><svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{e(label)}">'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width}" y2="{height - pad}" class="axis"/>'
            + "".join(rects) + f'<text x="{pad}" y="14">max {top:.3g} {e(unit)}, median {med:.3g} {e(unit)}</text>'
            f'</svg><figcaption>{e(label)}</figcaption></figure>')


def timeline(events: list[JsonObject], days: int = 14) -> str:
    """Drift and repair events per day over the last two weeks, as two rows of bars."""
    now = time.time()
    day = 86400
    drift = [0] * days
    rep = [0] * days
    for ev in events:
        ts = ev.get("ts")
        if not isinstance(ts, (int, float)) or now - ts >= days * day or ts > now:
            continue
        i = days - 1 - int((now - ts) // day)
        if ev.get("event") == "drift":
            drift[i] += 1
        elif ev.get("event") == "repaired":
            rep[i] += 1
    if not any(drift) and not any(rep):
        return ""
    return ("<h2>Drifts and repairs, last 14 days</h2>"
            + bars([float(x) for x in drift], unit="drifts", label="drift events per day (oldest first)")
            + bars([float(x) for x in rep], unit="repairs", label="repairs per day (oldest first)"))


def workloads(parts: JsonObject, bundle: str, width: int = 640) -> str:
    """The bench per workload: stock and the bundle side by side, iterations per second, each
    bar with its spread (min-max of the repeats) as a whisker."""
    stock, mine = parts.get("stock") or {}, parts.get("with_bundle") or {}
    names = [w for w in stock if w in mine]
    vals = [p.get(k) for side in (stock, mine) for w in names for p in [side[w]] for k in ("it_s", "max")]
    if not names or not all(isinstance(v, (int, float)) for v in vals):
        return ""
    top = max(vals) or 1.0
    row, pad, bar = 46, 150, 16
    height = row * len(names) + 30
    scale = (width - pad - 20) / top
    out = []
    for i, w in enumerate(names):
        y = 10 + i * row
        out.append(f'<text x="0" y="{y + bar + 4}">{e(w)}</text>')
        for j, (side, label, cls) in enumerate(((stock, "stock", "stock"), (mine, bundle, "mine"))):
            p = side[w]
            yy = y + j * (bar + 2)
            lo, hi = p.get("min", p["it_s"]), p.get("max", p["it_s"])
            out.append(f'<rect class="{cls}" x="{pad}" y="{yy}" width="{p["it_s"] * scale:.1f}" height="{bar}">'
                       f'<title>{e(label)}: {p["it_s"]:.3g} it/s ({lo:.3g}-{hi:.3g})</title></rect>'
                       f'<line class="spread" x1="{pad + lo * scale:.1f}" x2="{pad + hi * scale:.1f}" '
                       f'y1="{yy + bar / 2}" y2="{yy + bar / 2}"/>'
                       f'<text x="{pad + hi * scale + 4:.1f}" y="{yy + bar - 3}">{p["it_s"]:.3g}</text>')
    return (f'<figure><svg class="chart" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="iterations per second per workload, stock and {e(bundle)}">' + "".join(out)
            + f'</svg><figcaption>iterations per second per workload: stock (grey) and {e(bundle)} (blue), '
              f'the line: the spread of the repeats</figcaption></figure>')
