#!/usr/bin/python
"""Ansible module for the torchkeeper role: one step of torchkeeper's setup on a host, through
torchkeeper's own CLI and its --json output (whose ``changed`` fields say whether a command
changed anything: the role never guesses from text). Check mode asks the read-only commands
(plan, status, bundle import --dry-run, config set --dry-run, autostart status) and writes
nothing."""

from __future__ import annotations

DOCUMENTATION = r"""
module: torchkeeper
short_description: one step of torchkeeper's setup (setting, bundle, target, apply, autostart)
options:
  executable: {description: the torchkeeper command in its venv, required: true, type: path}
  home: {description: TORCHKEEPER_HOME for every command (empty for the user's default), type: str, default: ""}
  step:
    description: what to do
    required: true
    type: str
    choices: [setting, bundle, target, discover, apply, autostart]
  path: {description: "bundle: the archive; target: the environment's folder", type: path}
  name: {description: "target: its name; setting: SECTION.KEY", type: str}
  value: {description: "setting: the value", type: str}
  bundle: {description: "target, discover: the bundle to bind (name or id)", type: str}
  roots: {description: "discover: folders to search (empty: torchkeeper's defaults)", type: list, elements: path, default: []}
  targets: {description: "apply: the targets (empty: all)", type: list, elements: str, default: []}
  enabled: {description: "autostart: on or off", type: bool}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


class Cli:
    def __init__(self, module: AnsibleModule):
        self.m = module
        self.exe = module.params["executable"]
        home = module.params["home"]
        self.env = {"TORCHKEEPER_HOME": home} if home else {}

    def run(self, *args, ok_rcs=(0,)):
        """(rc, parsed --json output or None, stderr)."""
        rc, out, err = self.m.run_command([self.exe, *args], environ_update=self.env)
        if rc not in ok_rcs:
            self.fail(args, rc, err, out)
        try:
            data = json.loads(out) if out.strip() else None
        except ValueError:
            data = None
        return rc, data, err

    def fail(self, args, rc, err, out=""):
        # torchkeeper's own words: its "error:" and "hint:" lines (the gate's reason among them)
        lines = [ln for ln in (err or "").splitlines() if ln.startswith(("error:", "hint:"))]
        self.m.fail_json(msg=" ".join(lines) or (err or out).strip() or f"torchkeeper exited {rc}",
                         rc=rc, cmd=" ".join(["torchkeeper", *map(str, args)]), stderr=err)


def _status(cli: Cli) -> dict:
    return {t["name"]: t for t in cli.run("status", "--json")[1]["targets"]}


def _bundle_id(cli: Cli, ref: str) -> str | None:
    for b in cli.run("bundle", "list", "--json")[1]:
        if ref in (b["id"], b["name"]) or b["id"].startswith(ref):
            return b["id"]
    return None


def step_setting(cli: Cli, p) -> dict:
    """One config.toml setting (``name``: SECTION.KEY), through `torchkeeper config set`."""
    args = ["config", "set", p["name"], p["value"] if p["value"] is not None else ""]
    if cli.m.check_mode:
        args.append("--dry-run")
    out = cli.run(*args, "--json")[1]
    return {"changed": out["changed"], "setting": out["setting"], "value": out["value"]}


def step_bundle(cli: Cli, p) -> dict:
    _, dry, _ = cli.run("bundle", "import", p["path"], "--dry-run", "--json")
    if cli.m.check_mode or not dry["changed"]:
        return {"changed": dry["changed"], "bundle": dry["id"]}
    _, out, _ = cli.run("bundle", "import", p["path"], "--json")
    return {"changed": out["changed"], "bundle": out["id"]}


def _bind(cli: Cli, name: str, ref: str, known: dict) -> bool:
    """Bind bundle ``ref`` to target ``name``; whether that changed anything. A bundle the
    gate refuses fails the task with the gate's own words."""
    want = _bundle_id(cli, ref)
    have = ((known.get(name) or {}).get("bundle") or {}).get("id")
    if cli.m.check_mode:
        return want is None or have != want
    rc, out, err = cli.run("use", ref, "--target", name, "--json", ok_rcs=(0, 1, 2, 3, 4, 5))
    if rc != 0:
        cli.fail(["use", ref, "--target", name], rc, err)
    return bool(out["changed"])


def step_target(cli: Cli, p) -> dict:
    name, known = p["name"], _status(cli)
    changed = name not in known
    if changed and not cli.m.check_mode:
        _, out, _ = cli.run("target", "add", p["path"], "--name", name, "--json")
        changed, known = out["changed"], _status(cli)
    if p["bundle"]:
        changed = _bind(cli, name, p["bundle"], known) or changed
    return {"changed": changed, "target": name}


def step_discover(cli: Cli, p) -> dict:
    roots = [str(r) for r in p["roots"]]
    if cli.m.check_mode:
        found = cli.run("discover", *roots, "--json")[1]["found"]
        managed = {t["site_packages"] for t in _status(cli).values()}
        new = [f["path"] for f in found if f.get("site_packages") not in managed]
        return {"changed": bool(new), "would_add": new}
    out = cli.run("discover", *roots, "--add", "--json")[1]
    changed = out["changed"]
    if p["bundle"]:
        known = _status(cli)
        for name in sorted(known):
            changed = _bind(cli, name, p["bundle"], known) or changed
    return {"changed": changed, "added": out["added"]}


def step_apply(cli: Cli, p) -> dict:
    known = _status(cli)
    names = p["targets"] or sorted(known)
    todo = [n for n in names if not _in_place(known.get(n))]
    if cli.m.check_mode:
        plans, before, after = [], [], []
        for n in todo:
            rc, plan, err = cli.run("plan", n, "--json", ok_rcs=(0, 3))
            plans.append(plan)
            before.append(f"{n}: {known[n]['state']}, cuDNN {known[n].get('cudnn_now')}")
            after.append(f"{n}: bundle {plan.get('bundle_name')} ({plan.get('verdict')})")
            after += [f"  {s['action']} {s.get('rel') or s.get('key')}" for s in plan.get("files", [])
                      if s.get("action") != "in place"]
        return {"changed": bool(todo), "plans": plans,
                "diff": {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n"}}
    results = []
    for n in todo:
        rc, out, err = cli.run("apply", n, "--json", ok_rcs=(0, 1, 2, 3, 4, 5))
        res = (out or [{}])[0]
        if rc != 0 or not res.get("ok"):
            e = res.get("error") or {}
            cli.m.fail_json(msg=f"torchkeeper apply {n}: {e.get('error') or res.get('message') or err.strip()}"
                                + (f" (hint: {e['hint']})" if e.get("hint") else ""), rc=rc, results=results)
        results.append(res)
    return {"changed": any(r.get("changed") for r in results), "results": results}


def _in_place(t) -> bool:
    """Patched with the chosen bundle: nothing to apply."""
    if not t or t.get("state") != "patched":
        return False
    return (t.get("applied") or {}).get("bundle") == (t.get("bundle") or {}).get("id")


def step_autostart(cli: Cli, p) -> dict:
    now = cli.run("autostart", "status", "--json")[1]
    on = now.get("state") == "enabled"
    if on == p["enabled"]:
        return {"changed": False, "state": now.get("state")}
    if cli.m.check_mode:
        return {"changed": True, "state": now.get("state")}
    out = cli.run("autostart", "enable" if p["enabled"] else "disable", "--json")[1]
    return {"changed": out["changed"], "state": out.get("state")}


STEPS = {"setting": step_setting, "bundle": step_bundle, "target": step_target, "discover": step_discover,
         "apply": step_apply, "autostart": step_autostart}


def main():
    m = AnsibleModule(
        argument_spec=dict(
            executable=dict(type="path", required=True),
            home=dict(type="str", default=""),
            step=dict(type="str", required=True, choices=sorted(STEPS)),
            path=dict(type="path"), name=dict(type="str"), bundle=dict(type="str"), value=dict(type="str"),
            roots=dict(type="list", elements="path", default=[]),
            targets=dict(type="list", elements="str", default=[]),
            enabled=dict(type="bool"),
        ),
        required_if=[("step", "bundle", ["path"]), ("step", "target", ["path", "name"]),
                     ("step", "autostart", ["enabled"]), ("step", "setting", ["name"])],
        supports_check_mode=True,
    )
    if not os.path.exists(m.params["executable"]):
        if m.check_mode:  # --check on a host torchkeeper is not installed on yet
            m.exit_json(changed=True, msg="torchkeeper is not installed yet: the real run installs it first")
        m.fail_json(msg=f"{m.params['executable']} does not exist: is torchkeeper installed in that venv?")
    m.exit_json(**STEPS[m.params["step"]](Cli(m), m.params))


if __name__ == "__main__":
    main()
