"""The dashboard's pages: server-rendered HTML (no script at all: actions are forms that post
back with the session's CSRF token), charts as inline SVG. Pure: data in, a string out; every
value that came from a file or a user is escaped.

One stylesheet (style.css, served from the wheel) makes it legible at 1280x800 and in a
phone-width window (tables scroll sideways, the layout is one column)."""

from __future__ import annotations

import html
import time
from urllib.parse import quote

from .. import i18n
from ..engine.records import JsonObject
from ..i18n import N_, _, ngettext

STATE_WORDS = {"patched": N_("overlay in place"), "drifted": N_("overlay undone"), "stock": N_("stock"),
               "incompatible": N_("bundle does not fit"), "missing": N_("environment missing")}
HTML_LANG = {"en": "en", "zh_TW": "zh-Hant-TW", "zh_CN": "zh-Hans-CN", "ja": "ja"}


def state_words(state) -> str:
    return _(STATE_WORDS[state]) if state in STATE_WORDS else str(state)


def e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _form(action: str, label: str, csrf: str, extra: dict | None = None, cls: str = "") -> str:
    fields = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in (extra or {}).items())
    return (f'<form method="post" action="{e(action)}" class="inline">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">{fields}'
            f'<button type="submit" class="{e(cls)}">{e(label)}</button></form>')


def layout(title: str, body: str, csrf: str, paused: bool | None = None) -> str:
    nav = " ".join(f'<a href="{h}">{e(t)}</a>' for h, t in
                   (("/", _("Targets")), ("/bundles", _("Bundles")), ("/found", _("Found installs")),
                    ("/settings", _("Settings"))))
    banner = ('<p class="banner">' + e(_("Auto re-apply is paused.")) + " "
              + _form("/api/pause", _("Resume"), csrf, {"paused": "0"}) + "</p>") if paused else ""
    return (f'<!doctype html><html lang="{HTML_LANG.get(i18n.current(), "en")}"><head><meta charset="utf-8">'
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
    applied_note = _("(applied: %(name)s)")
    for t in status["targets"]:
        n = t["name"]
        rep = _last(events, "repaired", n)
        bench = t.get("last_bench") or {}
        applied = (t.get("applied") or {}).get("bundle_name")
        chosen = (t.get("bundle") or {}).get("name")
        ratio = bench.get("ratio")
        gain = f"x{ratio:.2f}" if isinstance(ratio, (int, float)) else ""
        actions = "".join(_form(f"/api/targets/{quote(n, safe='')}/{a}", label, csrf)
                          for a, label in (("reapply", _("Reapply")), ("revert", _("Revert to stock")),
                                           ("check", _("Check now"))))
        rows.append(
            f'<tr class="state-{e(t.get("state"))}"><td><a href="/targets/{e(quote(n, safe=""))}">{e(n)}</a></td>'
            f'<td class="state">{e(state_words(t.get("state")))}</td>'
            f"<td>{e(t.get('torch_version'))}<br><small>CUDA {e(t.get('torch_cuda'))}</small></td>"
            f"<td>{e(t.get('cudnn_stock'))} &rarr; {e(t.get('cudnn_now'))}</td>"
            f"<td>{e(chosen)}{'' if applied in (None, chosen) else ' ' + e(applied_note % {'name': applied})}</td>"
            f"<td>{e(_when(rep.get('ts'))) if rep else ''}<br>"
            f"{'<small>' + e(round(rep['latency'] * 1000)) + ' ms</small>' if rep and isinstance(rep.get('latency'), (int, float)) else ''}</td>"
            f"<td>{e(gain)}</td>"
            f'<td>{e((t.get("standby") or {}).get("state"))}</td><td class="actions">{actions}</td></tr>'
        )
    heads = "".join(
        f"<th{' title=' + chr(34) + e(tip) + chr(34) if tip else ''}>{e(h)}</th>"
        for h, tip in (
            (_("target"), None),
            (_("state"), None),
            ("torch", None),
            (_("cuDNN stock → now"), None),
            (_("bundle"), None),
            (_("last repair"), _("from the installer's last write")),
            (_("gain"), None),
            (_("standby"), None),
            ("", None),
        )
    )
    table = (
        (
            '<div class="scroll"><table><thead><tr>'
            + heads
            + "</tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table></div>"
        )
        if rows
        else "<p>"
        + _("No targets yet: add one with %(cmd)s, or Manage a found install.")
        % {"cmd": "<code>torchkeeper target add PATH</code>"}
        + "</p>"
    )
    d = status.get("driver") or {}
    driver = (
        e(_("driver %(version)s") % {"version": d.get("version")}) + f", CUDA {e(d.get('cuda'))}"
        if d.get("state") == "ok"
        else e(d.get("message") or _("driver not checked"))
    )
    times = [
        ev["latency"]
        for ev in events
        if ev.get("event") == "repaired" and isinstance(ev.get("latency"), (int, float))
    ][-30:]
    chart = (
        (
            "<h2>"
            + e(
                ngettext("Repair time, the last one", "Repair times, last %(n)d", len(times))
                % {"n": len(times)}
            )
            + "</h2>"
            + bars(
                [t * 1000 for t in times],
                unit="ms",
                label=_("time from the installer's last write to verified"),
            )
        )
        if times
        else ""
    )
    drift = timeline(events)
    return table + f'<p class="driver">{driver}</p>' + chart + drift


def target_page(
    t: JsonObject,
    plan: JsonObject | None,
    plan_error: str | None,
    events: list[JsonObject],
    csrf: str,
    way_back: list[JsonObject] | None = None,
) -> str:
    n = t["name"]
    parts = [
        f'<p>{e(t["site_packages"])}</p><p class="state state-{e(t.get("state"))}">'
        f"{e(state_words(t.get('state')))}</p>"
    ]
    file_, hint = _("file"), _("hint: %(hint)s")
    if plan is not None:
        steps = "".join(
            f"<tr><td>{e(s.get('rel') or s.get('key'))}</td><td>{e(s.get('action'))}</td>"
            f"<td>{e(s.get('prior'))}</td><td>{e(s.get('stock_source'))}</td></tr>"
            for s in plan.get("files", [])
        )
        reasons = "".join(
            f'<li class="{e(r.get("level"))}"><strong>{e(r.get("level"))}</strong> '
            f"[{e(r.get('rule'))}] {e(r.get('message'))}"
            f"{'<br><small>' + e(hint % {'hint': r['hint']}) + '</small>' if r.get('hint') else ''}</li>"
            for r in plan.get("reasons", [])
        )
        heads = "".join(f"<th>{e(h)}</th>" for h in (file_, _("action"), _("now"), _("stock hash from")))
        table = (
            (
                f'<div class="scroll"><table><thead><tr>{heads}</tr></thead><tbody>{steps}</tbody>'
                "</table></div>"
            )
            if steps
            else "<p>" + e(_("Nothing to change: every file of the bundle is in place.")) + "</p>"
        )
        parts.append(
            "<h2>"
            + e(
                _("Plan: bundle %(name)s — %(verdict)s")
                % {"name": plan.get("bundle_name"), "verdict": plan.get("verdict")}
            )
            + "</h2>"
            f'{table}<ul class="reasons">{reasons}</ul>'
        )
    elif plan_error:
        parts.append('<p class="note">' + e(_("No plan: %(why)s") % {"why": plan_error}) + "</p>")
    applied = t.get("applied")
    if applied:
        same, none, kept, missing = (
            _("same bytes as stock: nothing to keep"),
            _("none"),
            _("kept"),
            _("missing"),
        )
        rows = "".join(
            f"<tr><td>{e(w['rel'])}</td><td>{e(w['prior'])}</td>"
            f"<td>{e(same) if w['same_as_stock'] else e(w['backup'] or none)}</td>"
            f"<td>{'' if w['same_as_stock'] or not w['backup'] else (e(kept) if w['present'] else '<strong>' + e(missing) + '</strong>')}</td></tr>"
            for w in (way_back or [])
        )
        parts.append(
            "<h2>"
            + e(_("Way back"))
            + "</h2><p>"
            + e(
                _("%(n)s files replaced by bundle %(name)s on %(at)s; Revert puts back the bytes kept here:")
                % {"n": applied.get("files"), "name": applied.get("bundle_name"), "at": applied.get("at")}
            )
            + "</p>"
            + (
                '<div class="scroll"><table><thead><tr>'
                + "".join(f"<th>{e(h)}</th>" for h in (file_, _("was"), _("backup"), ""))
                + f"</tr></thead><tbody>{rows}</tbody></table></div>"
                if rows
                else ""
            )
        )
    parts.append(
        "".join(
            _form(f"/api/targets/{quote(n, safe='')}/{a}", label, csrf)
            for a, label in (
                ("reapply", _("Reapply")),
                ("revert", _("Revert to stock")),
                ("check", _("Check now")),
            )
        )
    )
    mine = [ev for ev in events if ev.get("target") == n][-40:]
    items = "".join(
        f"<li><time>{e(ev.get('time'))}</time> {e(ev.get('event'))}"
        f"{' &mdash; ' + e(ev.get('decision') or ev.get('why') or ev.get('message') or '') if (ev.get('decision') or ev.get('why') or ev.get('message')) else ''}</li>"
        for ev in reversed(mine)
    )
    parts.append(
        "<h2>"
        + e(_("Events"))
        + '</h2><ol class="events">'
        + (items or "<li>" + e(_("none yet")) + "</li>")
        + "</ol>"
    )
    bench = t.get("last_bench")
    if bench and isinstance(bench.get("ratio"), (int, float)):
        parts.append(
            "<h2>" + e(_("Measured gain: x%(ratio).2f") % {"ratio": float(bench["ratio"])}) + "</h2>"
            f"<p><small>{e(bench.get('gpu'))}, {e(bench.get('time'))}</small></p>"
            + workloads(bench.get("parts") or {}, str(bench.get("bundle_name") or "overlay"))
        )
    return "".join(parts)


def _files(n: int) -> str:
    return ngettext("%(n)d file:", "%(n)d files:", n) % {"n": n}


def bundles_page(bundles: list[JsonObject], status: JsonObject) -> str:
    users: dict[str, list[str]] = {}
    for t in status["targets"]:
        for bid in {(t.get("bundle") or {}).get("id"), (t.get("applied") or {}).get("bundle")} - {None}:
            users.setdefault(bid, []).append(t["name"])
    rows = "".join(
        f"<tr><td>{e(b.get('name'))}</td><td>{e(b.get('platform'))}</td><td>CUDA {e(b.get('cuda'))}, "
        f"cuDNN {e(b.get('cudnn'))}</td><td>{e(_files(len(b.get('files') or [])))} "
        f"{e(', '.join(f.get('name', '') for f in (b.get('files') or [])[:6]))}</td>"
        f"<td>{e(', '.join(str(s) for s in (b.get('sources') or [])[:3]))}</td>"
        f"<td>{e(', '.join(sorted(set(users.get(b.get('id'), [])))))}</td></tr>"
        for b in bundles
    )
    heads = "".join(
        f"<th>{e(h)}</th>"
        for h in (_("bundle"), _("platform"), _("versions"), _("holds"), _("came from"), _("used by"))
    )
    return (
        (
            '<div class="scroll"><table><thead><tr>'
            + heads
            + f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )
        if bundles
        else "<p>"
        + _("No bundles yet: %(fetch)s or %(create)s.")
        % {
            "fetch": "<code>torchkeeper bundle fetch --for TARGET</code>",
            "create": "<code>bundle create</code>",
        }
        + "</p>"
    )


def found_page(found: list, csrf: str) -> str:
    if not found:
        return "<p>" + e(_("No unmanaged torch installs found.")) + "</p>"
    rows = "".join(
        f"<tr><td>{e(f.label)}</td><td>{e(f.path)}</td><td>"
        + _form("/api/manage", _("Manage"), csrf, {"path": f.path})
        + (
            _form("/api/manage", _("Manage, get it and apply"), csrf, {"path": f.path, "fetch": "1"})
            if f.suggestion
            else ""
        )
        + f"<small>{e(f.suggestion or '')}</small></td></tr>"
        for f in found
    )
    return f'<div class="scroll"><table><tbody>{rows}</tbody></table></div>'


def _row(label: str, now: str, action: str, button: str, csrf: str, field: dict) -> str:
    return f"<tr><td>{e(label)}</td><td>{e(now)}</td><td>" + _form(action, button, csrf, field) + "</td></tr>"


def _switch(label: str, on: bool, action: str, csrf: str) -> str:
    """A setting that is on or off, and the button that turns it the other way."""
    return _row(label, _("on") if on else _("off"), action, _("Turn off") if on else _("Turn on"), csrf,
                {"enabled": "0" if on else "1"})


def settings_page(view, csrf: str, notifications: bool | None = None) -> str:
    paused = bool(getattr(view, "paused", False))
    auto = getattr(view, "autostart", None)
    rows = [_row(_("Auto re-apply"), _("paused") if paused else _("on"), "/api/pause",
                 _("Resume") if paused else _("Pause"), csrf, {"paused": "0" if paused else "1"})]
    if auto is not None:
        rows.append(_switch(_("Start at login"), bool(auto), "/api/autostart", csrf))
    if notifications is not None:
        rows.append(_switch(_("Notifications"), notifications, "/api/notifications", csrf))
    return (
        "<table><tbody>" + "".join(rows) + "</tbody></table>"
        "<p><small>"
        + _("The rest: config.toml (%(cmd)s says where); the agent reads it again when it changes.")
        % {"cmd": "<code>torchkeeper doctor</code>"}
        + "</small></p>"
    )


def bars(
    values: list[float],
    unit: str,
    label: str,
    names: list[str] | None = None,
    width: int = 640,
    height: int = 180,
) -> str:
    """A bar chart as inline SVG, scaled to the largest value, with that value and the median
    written out (what people read off a chart)."""
    if not values:
        return ""
    top = max(values) or 1.0
    n = len(values)
    gap, pad = 4, 28
    bw = min(40.0, max(2.0, (width - pad - gap * n) / n))  # one bar stays a bar, not a block
    rects = []
    for i, v in enumerate(values):
        h = (height - 2 * pad) * v / top
        x, y = pad + i * (bw + gap), height - pad - h
        name = names[i] if names and i < len(names) else f"#{i + 1}"
        rects.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}"><title>{e(name)}: '
            f"{v:.3g} {e(unit)}</title></rect>"
        )
        if names:
            rects.append(f'<text x="{x + bw / 2:.1f}" y="{height - 8}" text-anchor="middle">{e(name)}</text>')
    med = sorted(values)[n // 2]
    return (
        f'<figure><svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{e(label)}">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width}" y2="{height - pad}" class="axis"/>'
        + "".join(rects)
        + f'<text x="{pad}" y="14">'
        + e(_("max %(top).3g %(unit)s, median %(med).3g %(unit)s") % {"top": top, "med": med, "unit": unit})
        + "</text>"
        f"</svg><figcaption>{e(label)}</figcaption></figure>"
    )


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
    return (
        "<h2>"
        + e(_("Drifts and repairs, last 14 days"))
        + "</h2>"
        + bars([float(x) for x in drift], unit=_("drifts"), label=_("drift events per day (oldest first)"))
        + bars([float(x) for x in rep], unit=_("repairs"), label=_("repairs per day (oldest first)"))
    )


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
        for j, (side, label, cls) in enumerate(((stock, _("stock"), "stock"), (mine, bundle, "mine"))):
            p = side[w]
            yy = y + j * (bar + 2)
            lo, hi = p.get("min", p["it_s"]), p.get("max", p["it_s"])
            out.append(
                f'<rect class="{cls}" x="{pad}" y="{yy}" width="{p["it_s"] * scale:.1f}" height="{bar}">'
                f"<title>{e(label)}: {p['it_s']:.3g} it/s ({lo:.3g}-{hi:.3g})</title></rect>"
                f'<line class="spread" x1="{pad + lo * scale:.1f}" x2="{pad + hi * scale:.1f}" '
                f'y1="{yy + bar / 2}" y2="{yy + bar / 2}"/>'
                f'<text x="{pad + hi * scale + 4:.1f}" y="{yy + bar - 3}">{p["it_s"]:.3g}</text>'
            )
    return (
        f'<figure><svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="'
        + e(_("iterations per second per workload, stock and %(bundle)s") % {"bundle": bundle})
        + '">'
        + "".join(out)
        + "</svg><figcaption>"
        + e(
            _(
                "iterations per second per workload: stock (grey) and %(bundle)s (blue), the line: the spread of "
                "the repeats"
            )
            % {"bundle": bundle}
        )
        + "</figcaption></figure>"
    )
