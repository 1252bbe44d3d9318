"""The command line: everything the tray does, with --json for scripts.

Exit codes: 0 success; 1 verify found drift; 2 usage, config or input error; 3 refused
by the compatibility gate; 4 an operation failed and was rolled back. Never prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__, i18n
from .i18n import _, ngettext
from .errors import DRIFT, FAILED, OK, TKError, UsageError
from .engine.records import JsonObject


class _Formatter(argparse.HelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):
        super().add_usage(usage, actions, groups, _("usage: ") if prefix is None else prefix)


class _Parser(argparse.ArgumentParser):
    """argparse in the user's language: its headings and -h through our catalog (argparse's own
    catalog is not installed with Python); its error messages stay English."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Formatter)
        add_help = kw.pop("add_help", True)
        super().__init__(*args, add_help=False, **kw)
        self._positionals.title = _("positional arguments")
        self._optionals.title = _("options")
        if add_help:
            self.add_argument("-h", "--help", action="help", help=_("show this help message and exit"))

    def error(self, message):  # usage errors exit 2 with a hint, like every other error
        self.print_usage(sys.stderr)
        print(f"error: {message}\nhint: " + _("see `%(prog)s --help`") % {"prog": self.prog}, file=sys.stderr)
        raise SystemExit(2)


class Progress:
    """A progress bar on stderr for copies that take longer than about a second."""

    def __init__(self, total: int, label: str):
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False
        self.enabled = sys.stderr.isatty() and not os.environ.get("TORCHKEEPER_NO_PROGRESS")

    def set_total(self, total: int) -> None:
        self.total = max(total, 1)

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < 1.0 or now - self.last < 0.1:
            return
        self.last = now
        self.shown = True
        self._draw()

    def _draw(self) -> None:
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac * 100:5.1f}% "
                         f"{self.done / 1e6:,.0f}/{self.total / 1e6:,.0f} MB")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            self._draw()  # the last frame, at the real end
            sys.stderr.write("\n")


def _emit(args, obj, text: str | None = None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=1, sort_keys=True, default=str))
    elif text is not None:
        print(text)


def _some(items: list[str], n: int) -> str:
    """The first n items, and how many more there are."""
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return "; ".join(items[:n]) + more


def _engine():
    from .engine.core import Engine

    return Engine()


# -- targets -----------------------------------------------------------------------------
def cmd_target_add(args, eng):
    before = set(eng.targets())
    # with --name, the same environment already added under that name is no error: changed false
    name, rec, info = eng.add_target(args.path, args.name, exist_ok=args.name is not None)
    changed = name not in before
    _emit(
        args,
        {"name": name, **rec, "info": info.to_dict(), "changed": changed},
        _(
            "%(value)s target '%(name)s': %(site_packages)s\n  torch %(torch_version)s, CUDA "
            "%(value2)s, cuDNN %(value3)s, %(n)s CUDA/cuDNN libraries in %(value4)s"
        )
        % {
            "value": "added" if changed else "already",
            "name": name,
            "site_packages": info.site_packages,
            "torch_version": info.torch_version,
            "value2": info.torch_cuda or "none (CPU build)",
            "value3": info.cudnn_build or "unknown",
            "n": len(info.libs),
            "value4": ", ".join(info.lib_dirs) or "no folder",
        },
    )
    return OK


def cmd_target_list(args, eng):
    ts = eng.targets()
    rows = [{"name": n, **t} for n, t in sorted(ts.items())]
    if not rows:
        text = "no targets yet: add one with `torchkeeper target add PATH` or `torchkeeper discover --add`"
    else:
        text = "\n".join(f"{r['name']:<20} {r['site_packages']}" for r in rows)
    _emit(args, rows, text)
    return OK


def cmd_target_remove(args, eng):
    eng.remove_target(args.name, force=args.force)
    _emit(
        args,
        {"removed": args.name},
        _("removed target '%(name)s' (its files were not touched)") % {"name": args.name},
    )
    return OK


def cmd_discover(args, eng):
    from pathlib import Path

    from .engine.discover import default_roots, discover

    roots = [Path(r).expanduser() for r in args.roots]
    found = discover(roots or None)  # none given: the defaults and the launchers' folders
    roots = roots or default_roots()
    added = []
    if args.add:
        known = {t["site_packages"] for t in eng.targets().values()}
        for f in found:
            if str(f.site_packages) not in known:
                name, _added, _info = eng.add_target(str(f.path))
                added.append(name)
    rows = [f.to_dict() for f in found]
    w = max([18, *(len(f.app) for f in found)])
    lines = [f"{f.app:<{w}} torch {f.torch_version or '?':<16} {f.path}" for f in found]
    if not found:
        lines = [_("no torch installs found under %(roots)s") % {"roots": ", ".join(str(r) for r in roots)}]
    if added:
        lines.append(
            ngettext("added %(n)d target: %(names)s", "added %(n)d targets: %(names)s", len(added))
            % {"n": len(added), "names": ", ".join(added)}
        )
    timed_out = bool(getattr(found, "timed_out", False))
    if timed_out:
        lines.append(_("the search stopped at its time limit: give a folder to search it fully"))
    notes = list(getattr(found, "notes", []))
    lines += [_("note: %(note)s") % {"note": n} for n in notes]
    _emit(
        args,
        {"found": rows, "added": added, "changed": bool(added), "timed_out": timed_out, "notes": notes},
        "\n".join(lines),
    )
    return OK


# -- bundles -----------------------------------------------------------------------------
def _bundle_line(m):
    from .engine.bundle import describe

    return f"{m['name']:<28} {m['id'][:12]}  {describe(m)}, " + ngettext(
        "%(n)d file", "%(n)d files", len(m["files"])
    ) % {"n": len(m["files"])}


def cmd_bundle_create(args, eng):
    from .engine.bundle import public

    m, created = eng.bundles.create(args.sources, args.name, args.cuda, args.cudnn)
    lines = [
        (_("created bundle %(what)s") if created else _("already in the cache: %(what)s"))
        % {"what": _bundle_line(m)}
    ]
    if not created and args.name and args.name != m["name"]:
        lines.append(
            "  "
            + _("(these files are already bundle '%(name)s'; --name %(asked)s was not used)")
            % {"name": m["name"], "asked": args.name}
        )
    lines += ["  " + _("read: %(what)s") % {"what": r} for r in m.get("read", [])]
    libs_out, other = m.get("left_out", []), m.get("_other", [])
    if libs_out or other:
        lines.append(
            "  "
            + _(
                "left out %(n)d file(s) that are not CUDA runtime, cuBLAS or cuDNN libraries: %(libs)d "
                "other libraries, %(other)d other files (headers, tools, docs)"
            )
            % {"n": len(libs_out) + len(other), "libs": len(libs_out), "other": len(other)}
            + ("" if args.verbose else _("; --verbose names each"))
        )
        if libs_out and not args.verbose:
            lines.append(
                "    "
                + _("libraries: %(names)s")
                % {"names": ", ".join(libs_out[:6]) + (" ..." if len(libs_out) > 6 else "")}
            )
        if args.verbose:
            lines += [f"    {x}" for x in libs_out + other]
    _emit(args, {**public(m), "created_now": created}, "\n".join(lines))
    return OK


def _pip_options(args, platform=None):
    from .engine.fetch import PipOptions, host_platform

    return PipOptions(
        platform or host_platform(),
        find_links=list(args.find_links or []),
        index_url=args.index_url,
        pre=bool(getattr(args, "pre", False)),
        timeout_s=args.timeout,
    )


def cmd_bundle_fetch(args, eng):
    from .engine import libs
    from .engine.bundle import public
    from .engine.fetch import fetch_bundle
    from .engine.suggest import render

    asked = {
        f: v
        for f, v in ((libs.CUDNN, args.cudnn), (libs.CUBLAS, args.cublas), (libs.CUDART, args.cudart))
        if v is not None
    }
    bars = {}

    def progress(label, done, total):
        bar = bars.get(label)
        if bar is None:
            bar = bars[label] = Progress(total or 0, f"downloading {label}")
        if total:
            bar.set_total(total)
        bar(done - bar.done)

    say = (lambda line: print(line, file=sys.stderr)) if not args.json else None
    try:
        res = fetch_bundle(
            eng,
            target=args.for_target,
            asked=asked,
            cuda=args.cuda,
            platform=args.platform,
            name=args.name,
            opts=_pip_options(args),
            progress=progress,
            say=say,
        )
    finally:
        for bar in bars.values():
            bar.close()
    m = res.bundle
    lines = [
        render(res.suggestion, verbose=args.verbose),
        (_("created bundle %(what)s") if res.created else _("already in the cache: %(what)s"))
        % {"what": _bundle_line(m)},
    ]
    if args.for_target:
        lines.append(
            _("next: `torchkeeper use %(bundle)s --target %(target)s` and `torchkeeper apply %(target)s`")
            % {"bundle": m["name"], "target": args.for_target}
        )
    _emit(
        args,
        {
            "suggestion": res.suggestion.to_dict(),
            "wheels": res.wheels,
            "bundle": public(m),
            "created_now": res.created,
        },
        "\n".join(lines),
    )
    return OK


def cmd_suggest(args, eng):
    from .engine.fetch import suggest_for
    from .engine.suggest import render

    names = [args.target] if args.target else _names(args, eng)
    out, texts = [], []
    for n in names:
        try:
            s = suggest_for(eng, n, _pip_options(args))
        except TKError as e:
            if args.target:
                raise
            out.append({"target": n, "error": e.as_dict()})
            texts.append(f"target '{n}': {e.message}")
            continue
        out.append(s.to_dict())
        texts.append(
            render(s, verbose=args.verbose)
            + (f"\n  get it: `torchkeeper bundle fetch --for {n}`" if s.chosen else "")
        )
    _emit(args, out if not args.target else out[0], "\n".join(texts))
    return OK


def cmd_bench(args, eng):
    from .engine.bench import bench, render

    r = bench(
        eng,
        args.target,
        args.bundle,
        say=(lambda line: print(line, file=sys.stderr)) if not args.json else None,
    )
    _emit(args, r, render(r))
    return OK


def cmd_bundle_list(args, eng):
    from .engine.bundle import public

    ms = eng.bundles.all()
    _emit(
        args,
        [public(m) for m in ms],
        "\n".join(_bundle_line(m) for m in ms)
        or _("no bundles yet: create one with `torchkeeper bundle create SOURCE...`"),
    )
    return OK


def cmd_bundle_show(args, eng):
    from .engine.bundle import public

    m = eng.bundles.get(args.bundle)
    lines = [_bundle_line(m), f"  id: {m['id']}", f"  created: {m.get('created')}"]
    for s in m.get("sources", []):
        lines.append(f"  source: {s['kind']}: {s['path']}")
    lines += [f"  read: {r}" for r in m.get("read", [])]
    for f in m["files"]:
        lines.append(f"  {f['name']:<40} {f['size']:>12,} B  {f['sha256'][:16]}  {f.get('version') or ''}")
    if m.get("left_out"):
        lines.append("  left out: " + ", ".join(m["left_out"]))
    _emit(args, public(m), "\n".join(lines))
    return OK


def cmd_bundle_verify(args, eng):
    ms = [eng.bundles.get(args.bundle)] if args.bundle else eng.bundles.all()
    results = [{"bundle": m["name"], "id": m["id"], "problems": eng.bundles.verify(m)} for m in ms]
    if not args.bundle:
        results += [
            {"bundle": d.name[:12], "id": d.name, "problems": ["its manifest.json is missing or unreadable"]}
            for d in eng.bundles.damaged()
        ]
    bad = [r for r in results if r["problems"]]
    lines = []
    for r in results:
        lines.append(
            f"{r['bundle']}: "
            + (
                _("ok")
                if not r["problems"]
                else _("DAMAGED: %(problems)s") % {"problems": "; ".join(r["problems"])}
            )
        )
    if bad:
        lines.append(
            "hint: "
            + _("remove the damaged bundle (torchkeeper bundle remove NAME) and create or import it again")
        )
    _emit(args, results, "\n".join(lines) or _("no bundles"))
    return DRIFT if bad else OK


def cmd_bundle_remove(args, eng):
    m = eng.bundles.get(args.bundle)
    st = eng.state.read()
    users = sorted(n for n, o in st["overlays"].items() if o["bundle"] == m["id"])
    if users and not args.force:
        raise UsageError(
            _("bundle '%(name)s' is applied to %(join)s") % {"name": m["name"], "join": ", ".join(users)},
            _("revert those targets first, or pass --force (their stock backups are kept)"),
        )
    eng.bundles.remove(m)
    _emit(args, {"removed": m["id"]}, _("removed bundle '%(name)s'") % {"name": m["name"]})
    return OK


def cmd_bundle_export(args, eng):
    from .engine.archive import export

    m = eng.bundles.get(args.bundle)
    dest = export(eng.bundles, m, args.file)
    _emit(
        args,
        {"bundle": m["id"], "file": str(dest)},
        _("exported '%(name)s' to %(dest)s") % {"name": m["name"], "dest": dest},
    )
    return OK


def cmd_bundle_import(args, eng):
    from .engine.archive import import_, peek
    from .engine.bundle import public

    if args.dry_run:  # would it add a bundle? (the manifest alone; nothing written)
        m = peek(args.file)
        known = {b["id"] for b in eng.bundles.all()}
        created = m["id"] not in known
        _emit(
            args,
            {"id": m["id"], "name": m.get("name"), "changed": created, "dry_run": True},
            (_("would import %(what)s") if created else _("already in the cache: %(what)s"))
            % {"what": f"'{m.get('name')}' ({m['id'][:12]})"},
        )
        return OK
    m, created = import_(eng.bundles, args.file)
    _emit(
        args,
        {**public(m), "created_now": created, "changed": created},
        (_("imported %(what)s") if created else _("already in the cache: %(what)s"))
        % {"what": _bundle_line(m)},
    )
    return OK


# -- plan / apply / revert ---------------------------------------------------------------
def _names(args, eng):
    names = getattr(args, "targets", None) or []
    if not names:
        names = sorted(eng.targets())
        if not names:
            raise UsageError(_("no targets yet"), _("add one with `torchkeeper target add PATH`"))
    return names


def cmd_use(args, eng):
    from .errors import REFUSED

    res = eng.use(args.bundle, args.target)
    name = res.bundle["name"]
    lines = []
    if res.bound:
        lines.append(
            _("%(targets)s will use '%(name)s'; run `torchkeeper apply` to apply it")
            % {"targets": ", ".join(res.bound), "name": name}
        )
    for n, why in sorted(res.skipped.items()):
        lines.append(_("skipped %(name)s: %(why)s") % {"name": n, "why": why})
    if args.target is None:
        lines.append(_("targets added later will use '%(name)s' where it fits") % {"name": name})
    _emit(args, res.to_dict(), "\n".join(lines))
    return REFUSED if res.skipped and not res.bound else OK


def _plan_text(p, info) -> str:
    lines = [
        f"target '{p.target}': torch {info.torch_version} (CUDA {info.torch_cuda}, cuDNN "
        f"{info.cudnn_build}), bundle '{p.bundle_name}'"
    ]
    for s in p.steps:
        about = ([f"was {s.prior}"] if s.prior and s.action != "in place" else []) + (
            [f"stock: {s.stock_source}"] if s.stock_source else []
        )
        lines.append(f"  {s.action:<14} {s.rel or s.key}" + (f" ({', '.join(about)})" if about else ""))
    for r in p.reasons:
        tag = {"refuse": _("REFUSED"), "force": _("needs --force"), "note": _("note")}[r.level]
        lines.append(f"  {tag} [{r.rule}]: {r.message}" + (f"\n    hint: {r.hint}" if r.hint else ""))
    notes = sum(r.level == "note" for r in p.reasons)
    lines.append(
        "  "
        + _("verdict: %(verdict)s") % {"verdict": p.verdict}
        + (" " + ngettext("(%(n)d note)", "(%(n)d notes)", notes) % {"n": notes} if notes else "")
    )
    return "\n".join(lines)


def cmd_plan(args, eng):
    from .errors import REFUSED

    names = [args.target] if args.target else _names(args, eng)
    plans, texts, rc = [], [], OK
    for n in names:
        p, info, _plan_m = eng.plan(n, args.bundle)
        plans.append(p.to_dict())
        texts.append(_plan_text(p, info))
        if p.refusals:
            rc = REFUSED
    _emit(args, plans if len(plans) > 1 or not args.target else plans[0], "\n".join(texts))
    return rc


def _run_each(args, eng, fn):
    results, rc = [], OK
    for n in _names(args, eng):
        try:
            r = fn(n)
            results.append(r.to_dict())
            if not args.json:
                print(r.message)
        except TKError as e:
            results.append({"target": n, "ok": False, "error": e.as_dict()})
            rc = max(rc, e.exit_code)
            if not args.json:
                _print_error(e)
    if args.json:
        print(json.dumps(results, indent=1, sort_keys=True, default=str))
    return rc


def cmd_apply(args, eng):
    def one(n):
        prog = Progress(0, f"applying to {n}")
        try:
            return eng.apply(n, force=args.force, dry_run=args.dry_run, progress=prog)
        finally:
            prog.close()

    return _run_each(args, eng, one)


def cmd_revert(args, eng):
    return _run_each(args, eng, lambda n: eng.revert(n))


def cmd_verify(args, eng):
    names = args.targets or None
    if not eng.targets():
        raise UsageError(_("no targets yet"), _("add one with `torchkeeper target add PATH`"))
    res = eng.verify(names, full=args.full)
    lines = []
    for s in res:
        lines.append(f"{s.name:<20} {s.state}" + ("" if not s.problems else ": " + _some(s.problems, 4)))
    bad = [s for s in res if not s.in_desired_state]
    if bad:
        lines.append(
            "hint: `torchkeeper apply` re-applies drifted targets; `torchkeeper plan NAME` explains incompatible ones"
        )
    _emit(args, [s.to_dict() for s in res], "\n".join(lines))
    return DRIFT if bad else OK


def cmd_status(args, eng):
    from .daemon import view as V
    from .run import agent_status

    from .engine.records import STATUS_SCHEMA_VERSION

    st = {"schema_version": STATUS_SCHEMA_VERSION, **eng.status().to_dict()}
    st["agent"] = agent_status(eng.home)
    if args.json:
        _emit(args, st)
        return OK
    d = st["driver"] or {}
    lines = [
        (
            _("driver %(version)s") % {"version": d["version"]}
            + f", CUDA {d['cuda']}, "
            + ", ".join(g["name"] or "?" for g in d["gpus"])
        )
        if d.get("state") == "ok"
        else _("driver: %(what)s") % {"what": d.get("message") or _("none found")}
    ]
    a = st["agent"]
    lines.append(
        _("agent: running (pid %(pid)s)") % {"pid": a["pid"]}
        + (_(", auto re-apply paused") if a["paused"] else "")
        if a["running"]
        else _("agent: not running (start it with `torchkeeper run`)")
    )
    if a.get("watching") == "degraded":
        lines.append(
            "    "
            + _(
                "watching: degraded since %(since)s (%(why)s); every target is checked every few "
                "seconds instead. hint: `torchkeeper stop`, then `torchkeeper run`; `torchkeeper "
                "log --agent` says what failed"
            )
            % {"since": a.get("watching_since"), "why": a.get("watching_why")}
        )
    if not st["targets"]:
        lines.append(_("no targets yet: `torchkeeper target add PATH` or `torchkeeper discover --add`"))
    unknown = _("unknown")
    for t in st["targets"]:
        chosen = t["bundle"]["name"] if t.get("bundle") else None
        applied = (t.get("applied") or {}).get("bundle_name")
        if applied and chosen and applied != chosen:
            which = _(
                "applied %(applied)s, chosen %(chosen)s (not applied yet: `torchkeeper apply %(name)s`)"
            ) % {"applied": applied, "chosen": chosen, "name": t["name"]}
        elif applied:
            which = _("applied %(name)s") % {"name": applied}
        else:
            which = _("chosen %(name)s, not applied") % {"name": chosen} if chosen else _("no bundle chosen")
        state = V.state_word(t["state"])
        if t["state"] == "missing":
            lines.append(f"{t['name']:<20} {state:<13} {which}")
        else:
            cuda = "CUDA " + t["torch_cuda"] if t.get("torch_cuda") else _("a CPU build")
            lines.append(
                f"{t['name']:<20} {state:<13} "
                + _("torch %(torch)s (%(cuda)s), cuDNN %(now)s (stock %(stock)s), %(which)s")
                % {
                    "torch": t.get("torch_version") or unknown,
                    "cuda": cuda,
                    "now": t.get("cudnn_now") or unknown,
                    "stock": t.get("cudnn_stock") or unknown,
                    "which": which,
                }
            )
            if t.get("cudnn_unknown"):
                lines.append("    " + _("cuDNN unknown: %(why)s") % {"why": t["cudnn_unknown"]})
        if t.get("held"):
            lines.append(
                "    "
                + _("%(held)s: the agent leaves it alone until that ends") % {"held": t["held"]["describe"]}
            )
        sb = t.get("standby")
        if sb and sb.get("state") not in (None, "off"):
            lines.append(
                "    "
                + _("standby: %(state)s") % {"state": sb["state"]}
                + (
                    ngettext(
                        ", %(n)d file, %(mb).1f MB of disk of its own",
                        ", %(n)d files, %(mb).1f MB of disk of its own",
                        sb["files"],
                    )
                    % {"n": sb["files"], "mb": sb["disk_bytes"] / 1e6}
                    if sb.get("files")
                    else ""
                )
                + (f" ({sb['why']})" if sb.get("why") else "")
            )
        shown = t["problems"][:3]
        lines += [f"    {pr}" for pr in shown]
        if len(t["problems"]) > len(shown):
            lines.append(
                "    "
                + _("(+%(n)d more: `torchkeeper verify %(name)s --json`)")
                % {"n": len(t["problems"]) - len(shown), "name": t["name"]}
            )
        if t.get("last_bench"):
            lb = t["last_bench"]
            lines.append(f"    last bench: x{lb['ratio']:.2f} with '{lb['bundle_name']}' ({lb['time']})")
    print("\n".join(lines))
    return OK


def cmd_standby(args, eng):
    names = args.targets or sorted(eng.targets())
    out, lines = {}, []
    for n in names:
        r = eng.prepare_standby(n)
        out[n] = r
        lines.append(
            f"{n:<20} standby {r['state']}"
            + (f", {r['files']} file(s), {r['bytes']:,} bytes" if r.get("files") else "")
            + (f" ({r['why']})" if r.get("why") else "")
        )
    _emit(args, out, "\n".join(lines) or _("no targets yet"))
    return OK


def cmd_doctor(args, eng):
    from .engine.doctor import doctor, render

    report = doctor(eng, probe=args.probe)
    _emit(args, report, render(report))
    return OK


def cmd_log(args, eng):
    from .engine.state import read_events_counted

    evs, skipped = read_events_counted(eng.home, None if args.agent else args.n)
    if skipped:
        print(
            f"note: skipped {skipped} unreadable line{'s' if skipped != 1 else ''} in {eng.home.events_file}",
            file=sys.stderr,
        )
    if args.agent:
        evs = [e for e in evs if e.get("source") == "agent"][-args.n :]
    lines = []
    for e in evs:
        rest = " ".join(f"{k}={v}" for k, v in sorted(e.items()) if k not in ("ts", "time", "event"))
        if e.get("event") == "repaired" and isinstance(e.get("latency"), (int, float)):
            # first what a user asks: how long after the installer's last write it was back
            rest = (
                f"in {e['latency']:.2f} s after the last write"
                if e.get("last_write")
                else f"in {e['latency']:.2f} s"
            ) + f" ({rest})"
        lines.append(f"{e.get('time')} {e.get('event')} {rest}")
    _emit(args, evs, "\n".join(lines) or _("no events yet"))
    return OK


def cmd_run(args, eng=None):
    from .home import get_home
    from .run import run

    if args.home:  # a login entry cannot set variables: it passes the home this way
        os.environ["TORCHKEEPER_HOME"] = args.home
    return run(get_home(), headless=args.headless, verbose=args.verbose)


def cmd_autostart(args, eng):
    from .engine.autostart import Autostart

    autostart = Autostart(eng.home)
    before = autostart.status()["state"] if args.action != "status" else None
    if args.action == "enable":
        st, said = autostart.enable(by=args.by, if_not_declined=args.if_not_declined)
    elif args.action == "disable":
        st, said = autostart.disable(by=args.by)
    elif args.action == "remove":  # an uninstaller's: the entry goes, the user's choice stays
        st, said = autostart.forget()
    else:
        st = autostart.status()
        said = {
            "enabled": "torchkeeper starts at login",
            "disabled": "torchkeeper does not start at login",
            "turned off": "start at login is turned off in the system's settings: "
            + (st.get("how_to_turn_on") or ""),
        }[st["state"]]
        if st["state"] != "disabled":
            said += f"\n  {st['where']}" + (f"\n  runs: {st['command']}" if st.get("command") else "")
    if before is not None:
        st = {**st, "changed": st.get("state") != before}
    _emit(args, st, said)
    return OK


def _stop(eng, timeout: float) -> JsonObject:
    from .run import stop_agent

    r = stop_agent(eng.home, timeout)
    if not r["stopped"]:
        raise TKError(
            _("the agent (pid %(pid)s) did not stop within %(timeout)g s")
            % {"pid": r["pid"], "timeout": timeout},
            _(
                "it finishes the change it is writing first; try again, or end it in "
                "Task Manager / with `kill` (the next command finishes an "
                "interrupted change)"
            ),
        )
    return r


def cmd_stop(args, eng):
    r = _stop(eng, args.timeout)
    _emit(
        args,
        r,
        _("stopped the agent (pid %(pid)s)") % {"pid": r["pid"]}
        if r["was_running"]
        else _("the agent is not running"),
    )
    return OK


def cmd_uninstall(args, eng):
    """What an uninstaller runs before it removes the program itself."""
    import shutil

    from .engine.autostart import Autostart

    stopped = _stop(eng, args.timeout)
    st, said = Autostart(eng.home).forget()
    removed = [str(eng.home.log_dir)]
    shutil.rmtree(eng.home.log_dir, ignore_errors=True)
    try:  # ~/.local/state/torchkeeper once its log/ is gone
        eng.home.log_dir.parent.rmdir()
    except OSError:
        pass
    for name in ("agent.pid", "agent.lock", "agent.stop"):
        try:
            (eng.home.data_dir / name).unlink()
        except OSError:
            pass
    if args.remove_cache:
        shutil.rmtree(eng.home.cache_dir, ignore_errors=True)
        removed.append(str(eng.home.cache_dir))
    kept = [
        str(p)
        for p in (eng.home.config_dir, eng.home.data_dir, None if args.remove_cache else eng.home.cache_dir)
        if p and p.exists()
    ]
    r = {"agent": stopped, "autostart": st, "removed": removed, "kept": kept}
    lines = [
        "stopped the agent" if stopped["was_running"] else "the agent was not running",
        said,
        "removed: " + ", ".join(removed),
    ]
    if kept:
        lines.append(
            "kept (settings, targets, the backups `revert` needs"
            + ("" if args.remove_cache else ", the bundle cache")
            + "): "
            + ", ".join(kept)
        )
    _emit(args, r, "\n".join(lines))
    return OK


def cmd_config_set(args, eng):
    """One setting in the user's config.toml, every other line kept; `changed` says whether it
    changed (what a configuration tool's second run reads)."""
    from .engine.config import set_value

    section, _dot, key = args.setting.partition(".")
    if not key:
        raise UsageError(
            _("'%(setting)s' is not SECTION.KEY") % {"setting": args.setting},
            _("e.g. `torchkeeper config set metrics.textfile_dir /srv/prom`"),
        )
    changed, value = set_value(eng.home.config_file, section, key, args.value, dry_run=args.dry_run)
    verb = ("would set" if args.dry_run else "set") if changed else "already"
    _emit(
        args,
        {
            "setting": args.setting,
            "value": value,
            "changed": changed,
            "dry_run": args.dry_run,
            "file": str(eng.home.config_file),
        },
        _("%(verb)s %(setting)s = %(value)r in %(config_file)s")
        % {"verb": verb, "setting": args.setting, "value": value, "config_file": eng.home.config_file},
    )
    return OK


def cmd_dashboard(args, eng):
    """Ask the running agent to serve the dashboard; print (--json: url and token) and open it.
    With no agent running there is no dashboard (it is the agent's): exit 2 with a hint."""
    import secrets
    import time

    from .daemon.view import DASHBOARD_ANSWER, DASHBOARD_ASK
    from .engine.fsutil import atomic_write_json, load_json
    from .run import agent_status

    if not agent_status(eng.home)["running"]:
        raise UsageError(
            _("the agent is not running: the dashboard is served by it"),
            _(
                "start it with `torchkeeper run` (or log in again, if it starts "
                "at login), then `torchkeeper dashboard`"
            ),
        )
    nonce = secrets.token_hex(8)
    answer, ask = eng.home.data_dir / DASHBOARD_ANSWER, eng.home.data_dir / DASHBOARD_ASK
    deadline = time.monotonic() + args.timeout
    asked_at = -1.0
    got = None
    while time.monotonic() < deadline:
        if time.monotonic() - asked_at >= 1.0:
            # asked again each second: an agent still starting, or one whose watch lost the
            # event, takes it then (it answers a nonce once)
            atomic_write_json(ask, {"nonce": nonce})
            asked_at = time.monotonic()
        try:
            got = load_json(answer, follow=False)
            if got.get("nonce") == nonce:
                break
        except (OSError, ValueError, AttributeError):
            pass
        got = None
        time.sleep(0.05)
    ask.unlink(missing_ok=True)
    answer.unlink(
        missing_ok=True
    )  # read once: the CLI leaves no copy of the token behind (user-only folder anyway)
    if got is None:
        raise TKError(
            _("the agent did not answer within %(timeout)g s") % {"timeout": args.timeout},
            _(
                "`torchkeeper log --agent` says what it is doing; `torchkeeper stop` "
                "then `torchkeeper run` starts it afresh"
            ),
        )
    if got.get("error"):
        raise TKError(
            _("the agent could not start the dashboard: %(error)s") % {"error": got["error"]},
            _("`torchkeeper log --agent` has the details"),
        )
    url = got["url"]
    if not args.no_browser:
        from .platform.opener import open_path

        open_path(url)
    _emit(
        args,
        {"url": url, "token": got["token"]},
        _(
            "dashboard: %(url)s\n  (the link signs in once; scripts: `torchkeeper dashboard "
            "--json` gives an API token for `Authorization: Bearer`)"
        )
        % {"url": url},
    )
    return OK


def cmd_metrics(args, eng):
    """Prometheus' text format on stdout, or written to DIR/torchkeeper.prom in one rename."""
    from pathlib import Path

    from .engine import metrics

    f = metrics.facts(eng)
    data = metrics.render(f)
    if args.textfile is None:
        sys.stdout.write(data.decode("utf-8"))
        return OK
    folder = Path(args.textfile).expanduser()
    if not folder.is_dir():
        raise UsageError(
            _("%(folder)s is not a folder") % {"folder": folder},
            _(
                "give the textfile collector's folder (node_exporter's "
                "--collector.textfile.directory), made beforehand"
            ),
        )
    try:
        path = metrics.write_textfile(folder, data)
    except OSError as e:
        raise UsageError(
            _("cannot write %(value)s: %(value2)s")
            % {"value": folder / metrics.FILENAME, "value2": e.strerror or e},
            _("run as a user who may write there, or choose another folder"),
        ) from None
    _emit(
        args,
        {"file": str(path), "bytes": len(data), "targets": len(f.targets)},
        ngettext(
            "wrote %(path)s (%(bytes)s bytes, %(n)d target)",
            "wrote %(path)s (%(bytes)s bytes, %(n)d targets)",
            len(f.targets),
        )
        % {"path": path, "bytes": len(data), "n": len(f.targets)},
    )
    return OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="torchkeeper",
        description=_(
            "Keep a newer CUDA runtime / cuBLAS / cuDNN overlaid on PyTorch, safely and reversibly."
        ),
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"torchkeeper {__version__}",
        help=_("show program's version number and exit"),
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    def cmd(name, fn, help, parent=sub, json_opt=True):
        sp = parent.add_parser(name, help=help, description=help)
        if json_opt:
            sp.add_argument("--json", action="store_true", help=_("machine-readable output"))
        sp.set_defaults(fn=fn)
        return sp

    t = sub.add_parser("target", help=_("manage targets (Python environments with torch)"))
    tsub = t.add_subparsers(dest="sub", metavar="ACTION", parser_class=_Parser, required=True)
    a = cmd("add", cmd_target_add, _("add a venv, python_embeded, conda env or site-packages"), tsub)
    a.add_argument("path")
    a.add_argument("--name")
    cmd("list", cmd_target_list, _("list targets"), tsub)
    r = cmd("remove", cmd_target_remove, _("forget a target (its files are not touched)"), tsub)
    r.add_argument("name")
    r.add_argument("--force", action="store_true", help=_("forget it even with an overlay applied"))

    cf = sub.add_parser("config", help=_("change a setting in config.toml"))
    cfsub = cf.add_subparsers(dest="sub", metavar="ACTION", parser_class=_Parser, required=True)
    cs = cmd(
        "set", cmd_config_set, _("set SECTION.KEY to VALUE (checked against the settings' rules)"), cfsub
    )
    cs.add_argument("setting", metavar="SECTION.KEY")
    cs.add_argument("value")
    cs.add_argument("--dry-run", action="store_true", help=_("say whether it would change, write nothing"))

    d = cmd(
        "discover",
        cmd_discover,
        _("find torch installs of A1111, Forge, kohya_ss, ComfyUI, Stability Matrix, Pinokio, ..."),
    )
    d.add_argument("roots", nargs="*", help=_("folders to search (default: home and drive roots)"))
    d.add_argument("--add", action="store_true", help=_("add what is found as targets"))

    b = sub.add_parser("bundle", help=_("manage bundles (cached CUDA/cuDNN library sets)"))
    bsub = b.add_subparsers(dest="sub", metavar="ACTION", parser_class=_Parser, required=True)
    c = cmd(
        "create", cmd_bundle_create, _("create a bundle from toolkit/cuDNN folders or nvidia-* wheels"), bsub
    )
    c.add_argument("sources", nargs="+", metavar="SOURCE")
    c.add_argument("--name")
    c.add_argument("--cuda", help=_("CUDA version, when the source does not say (X.Y)"))
    c.add_argument("--cudnn", help=_("cuDNN version, when the source does not say (X.Y.Z)"))
    c.add_argument("--verbose", "-v", action="store_true", help=_("name every file left out"))
    fe = cmd(
        "fetch",
        cmd_bundle_fetch,
        _("download nvidia-* wheels with pip and make a bundle (no NVIDIA account needed)"),
        bsub,
    )
    for flag, what in (("--cudnn", "cuDNN"), ("--cublas", "cuBLAS"), ("--cudart", "CUDA runtime")):
        fe.add_argument(
            flag,
            nargs="?",
            const="",
            metavar="X[.Y[.Z]]",
            help=_("fetch %(what)s (the newest that fits, or this version)") % {"what": what},
        )
    fe.add_argument("--cuda", metavar="11|12|13", help=_("the CUDA major (names differ by major)"))
    fe.add_argument(
        "--platform",
        choices=("windows", "linux"),
        help=_("default: this machine's, or the target's with --for"),
    )
    fe.add_argument(
        "--for",
        dest="for_target",
        metavar="TARGET",
        help=_("fill in platform, CUDA major and the versions the gate accepts for it"),
    )
    fe.add_argument("--name")
    cmd("list", cmd_bundle_list, _("list bundles"), bsub)
    s = cmd("show", cmd_bundle_show, _("show a bundle's files and where its versions were read"), bsub)
    s.add_argument("bundle")
    v = cmd("verify", cmd_bundle_verify, _("re-hash bundles in the cache"), bsub)
    v.add_argument("bundle", nargs="?")
    rm = cmd("remove", cmd_bundle_remove, _("remove a bundle from the cache"), bsub)
    rm.add_argument("bundle")
    rm.add_argument("--force", action="store_true")
    ex = cmd("export", cmd_bundle_export, _("export a bundle to one archive file"), bsub)
    ex.add_argument("bundle")
    ex.add_argument("file")
    im = cmd("import", cmd_bundle_import, _("import a bundle archive (every hash checked)"), bsub)
    im.add_argument("file")
    im.add_argument(
        "--dry-run",
        action="store_true",
        help=_("say whether it would add a bundle (its manifest checked), write nothing"),
    )

    u = cmd("use", cmd_use, _("choose the bundle for one target or all"))
    u.add_argument("bundle")
    u.add_argument("--target")
    pl = cmd("plan", cmd_plan, _("show what apply would do, file by file, and the gate's verdict"))
    pl.add_argument("target", nargs="?")
    pl.add_argument("--bundle", help=_("plan another bundle than the chosen one"))
    ap = cmd("apply", cmd_apply, _("apply the chosen bundle (a transaction: all or nothing)"))
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--force", action="store_true", help=_("override warnings (never a refusal)"))
    rv = cmd("revert", cmd_revert, _("restore the stock files"))
    rv.add_argument("targets", nargs="*")
    vf = cmd("verify", cmd_verify, _("check targets are as applied (exit 1 on drift)"))
    vf.add_argument("targets", nargs="*")
    vf.add_argument("--full", action="store_true", help=_("re-hash every file, not just stat data"))
    cmd("status", cmd_status, _("targets, their state and the driver"))
    da = cmd(
        "dashboard", cmd_dashboard, _("open the local dashboard (served by the running agent on 127.0.0.1)")
    )
    da.add_argument("--no-browser", action="store_true", help=_("print the URL, open nothing"))
    da.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    me = cmd(
        "metrics",
        cmd_metrics,
        _("Prometheus metrics (text format), or a textfile for node_exporter's textfile collector"),
    )
    me.add_argument("--textfile", metavar="DIR", help=_("write DIR/torchkeeper.prom (temp file + rename)"))
    sg = cmd(
        "suggest",
        cmd_suggest,
        _("which nvidia-* wheels would fit each target best, and why (downloads nothing)"),
    )
    sg.add_argument("target", nargs="?")
    for sp_ in (fe, sg):
        sp_.add_argument(
            "--find-links",
            action="append",
            metavar="DIR|URL",
            help=_("also look here for wheels (pip's --find-links)"),
        )
        sp_.add_argument(
            "--index-url",
            metavar="URL",
            help=_("pip's --index-url (else PIP_INDEX_URL or pip's configuration)"),
        )
        sp_.add_argument(
            "--timeout",
            type=_positive,
            default=30.0,
            metavar="SECONDS",
            help=_(
                "how long the index may be silent (default 30; a download "
                "with nothing new for twice that is stalled)"
            ),
        )
        sp_.add_argument(
            "--pre", action="store_true", help=_("consider pre-release, dev and local versions too")
        )
        sp_.add_argument(
            "--verbose",
            "-v",
            action="store_true",
            help=_("every candidate version and why it was taken or skipped, and the rules"),
        )
    bn = cmd(
        "bench",
        cmd_bench,
        _(
            "measure the speed-up of a bundle in the target's own "
            "Python (stock, then with the bundle; the target is put "
            "back as it was)"
        ),
    )
    bn.add_argument("target")
    bn.add_argument("--bundle", help=_("default: the target's chosen bundle"))
    sb = cmd(
        "standby",
        cmd_standby,
        _("prepare each target's standby copy now (the agent does it by itself after every apply)"),
    )
    sb.add_argument("targets", nargs="*")
    dr = cmd("doctor", cmd_doctor, _("the manual checks: driver, CUDA toolkits, torch/CUDA/cuDNN per target"))
    dr.add_argument("--probe", action="store_true", help=_("also run each target's Python: import torch"))
    lg = cmd("log", cmd_log, _("show recent events"))
    lg.add_argument("-n", type=int, default=50, help=_("how many (default 50)"))
    lg.add_argument("--agent", action="store_true", help=_("only the agent's events"))
    rn = cmd(
        "run",
        cmd_run,
        _(
            "run the agent: watch targets and the driver, re-apply, tell "
            "(a tray icon; headless where there is no tray)"
        ),
        json_opt=False,
    )
    rn.add_argument("--headless", action="store_true", help=_("no tray icon"))
    rn.add_argument("--verbose", "-v", action="store_true", help=_("also log to the terminal"))
    rn.add_argument("--home", help=_("use this folder for config, state, cache and logs (TORCHKEEPER_HOME)"))
    au = cmd("autostart", cmd_autostart, _("start the agent at login: enable, disable or status"))
    au.add_argument(
        "action",
        choices=("enable", "disable", "status", "remove"),
        help=_("remove: drop the entry but keep your choice (for uninstallers)"),
    )
    au.add_argument(
        "--if-not-declined",
        action="store_true",
        help=_("enable unless the user turned it off before (for installers)"),
    )
    au.add_argument("--by", default="user", choices=("user", "installer"), help=argparse.SUPPRESS)
    so = cmd("stop", cmd_stop, _("stop the running agent (after the change it is writing, if any)"))
    so.add_argument("--timeout", type=float, default=30.0, help=_("seconds to wait (default 30)"))
    un = cmd(
        "uninstall",
        cmd_uninstall,
        _(
            "what an uninstaller runs first: stop the agent, "
            "remove the start-at-login entry (your choice is "
            "kept) and the logs; targets, their backups and "
            "your settings are never touched"
        ),
    )
    un.add_argument("--remove-cache", action="store_true", help=_("also remove the bundle cache"))
    un.add_argument("--timeout", type=float, default=30.0, help=_("seconds to wait for the agent"))
    return p


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (above 0, at most 3600)")
    return v


def _say_engine_warnings() -> None:
    """The engine's warnings (a hostile file set aside, a malformed hold ignored) as one
    `warning:` line each on stderr; the agent logs them to agent.log instead."""
    import logging

    log = logging.getLogger("torchkeeper.engine")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("warning: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.WARNING)
        log.propagate = False


def _print_error(e: TKError) -> None:
    print(f"error: {e.message}", file=sys.stderr)
    if e.hint:
        print(f"hint: {e.hint}", file=sys.stderr)


def _language(args, config_value: str | None = None) -> None:
    """The user's language for what this command prints (English for --json)."""
    from .platform.language import os_languages

    i18n.setup(config_value, os_languages(), machine=bool(getattr(args, "json", False)))


def main(argv: list[str] | None = None) -> int:
    _language(None)  # --help and usage errors: TORCHKEEPER_LANG or the OS's language
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    _language(args)  # English for --json; the OS's until the config is read
    for stream in (sys.stdout, sys.stderr):
        # a console or pipe in a code page without the language's characters (Japanese asked for
        # on a cp1252 Windows, a target named in another script) shows "?" instead of failing
        if (
            stream is not None
            and getattr(stream, "errors", None) == "strict"
            and hasattr(stream, "reconfigure")
        ):
            stream.reconfigure(errors="replace")
    try:
        if args.fn is cmd_run:  # the agent reports a broken config itself and keeps going
            return cmd_run(args)
        _say_engine_warnings()
        eng = _engine()
        from .engine.config import load

        warnings: list = []
        # the CLI reads [apply] and [ui]; a bad agent-only setting is the agent's to report
        eng.config = load(eng.home.config_file, uses={"apply", "ui"}, warnings=warnings)
        _language(args, eng.config["ui"]["language"])
        if warnings:
            more = _(" (and %(n)d more)") % {"n": len(warnings) - 1} if len(warnings) > 1 else ""
            print(
                "warning: "
                + _("%(message)s%(more)s; the agent keeps its last good settings")
                % {"message": warnings[0].message, "more": more},
                file=sys.stderr,
            )
        if not eng.config["apply"]["progress"]:
            os.environ["TORCHKEEPER_NO_PROGRESS"] = "1"
        for line in eng.recover_all():
            print(line, file=sys.stderr)
        return args.fn(args, eng)
    except TKError as e:
        if getattr(args, "json", False):
            print(json.dumps(e.as_dict(), indent=1, sort_keys=True))
        _print_error(e)
        return e.exit_code
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        print(
            "hint: " + _("check the path and its permissions, and free disk space if it is full"),
            file=sys.stderr,
        )
        return FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
