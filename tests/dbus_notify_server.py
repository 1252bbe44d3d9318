"""A real org.freedesktop.Notifications server for the tests, on jeepney with blocking I/O.

    python dbus_notify_server.py --ready FILE [--record FILE] [--bus-only]

Connects to the session bus in DBUS_SESSION_BUS_ADDRESS (a private dbus-daemon, or run it under
``dbus-run-session``), owns org.freedesktop.Notifications and serves it at
/org/freedesktop/Notifications:

* Notify(susssasa{sv}i) -> u: ids 1, 2, ...; each call is one JSON line in the record file
  (app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout, id),
  written and flushed *before* the reply, so a client that got its reply finds its line.
* GetCapabilities -> ["body", "actions"], GetServerInformation, CloseNotification (emits
  NotificationClosed(id, 3)), org.freedesktop.DBus.Introspectable.Introspect (dbus-fast, under
  desktop-notifier, builds its proxy from it) and org.freedesktop.DBus.Peer.Ping.
* test-only: org.torchkeeper.Test.InvokeAction(u id, s action_key) emits
  ActionInvoked(id, action_key), as a user clicking a button would.

When it is serving it writes {"address": bus address, "pid": its pid} to the ready file
(atomically). ``--bus-only`` writes the ready file without owning the name: a session bus with
no notification server; ``--hang`` owns it and never answers: a hung server.
Exits on SIGTERM/SIGINT or when the bus goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from jeepney import DBusAddress, HeaderFields, MessageFlag, MessageType
from jeepney import new_error, new_method_return, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

NAME = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
IFACE = "org.freedesktop.Notifications"
TEST_IFACE = "org.torchkeeper.Test"

INTROSPECTION = f"""<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node name="{PATH}">
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
  </interface>
  <interface name="{IFACE}">
    <method name="Notify">
      <arg name="app_name" type="s" direction="in"/>
      <arg name="replaces_id" type="u" direction="in"/>
      <arg name="app_icon" type="s" direction="in"/>
      <arg name="summary" type="s" direction="in"/>
      <arg name="body" type="s" direction="in"/>
      <arg name="actions" type="as" direction="in"/>
      <arg name="hints" type="a{{sv}}" direction="in"/>
      <arg name="expire_timeout" type="i" direction="in"/>
      <arg name="id" type="u" direction="out"/>
    </method>
    <method name="CloseNotification"><arg name="id" type="u" direction="in"/></method>
    <method name="GetCapabilities"><arg name="capabilities" type="as" direction="out"/></method>
    <method name="GetServerInformation">
      <arg name="name" type="s" direction="out"/>
      <arg name="vendor" type="s" direction="out"/>
      <arg name="version" type="s" direction="out"/>
      <arg name="spec_version" type="s" direction="out"/>
    </method>
    <signal name="NotificationClosed">
      <arg name="id" type="u"/><arg name="reason" type="u"/>
    </signal>
    <signal name="ActionInvoked">
      <arg name="id" type="u"/><arg name="action_key" type="s"/>
    </signal>
  </interface>
  <interface name="{TEST_IFACE}">
    <method name="InvokeAction">
      <arg name="id" type="u" direction="in"/><arg name="action_key" type="s" direction="in"/>
    </method>
  </interface>
</node>
"""


def _plain(value):
    """A hint's value as JSON: jeepney gives variants as (signature, value)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = value[1]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


class Server:
    def __init__(self, conn, record_path: str | None):
        self.conn = conn
        self.record = open(record_path, "a", encoding="utf-8") if record_path else None
        self.next_id = 1
        self.emitter = DBusAddress(PATH, interface=IFACE)

    def signal(self, member: str, signature: str, body: tuple) -> None:
        self.conn.send(new_signal(self.emitter, member, signature, body))

    def handle(self, msg) -> None:
        fields = msg.header.fields
        member = fields.get(HeaderFields.member)
        iface = fields.get(HeaderFields.interface)  # optional in a call: dispatch by member
        reply = self.dispatch(msg, iface, member)
        if not msg.header.flags & MessageFlag.no_reply_expected:
            self.conn.send(reply)

    def dispatch(self, msg, iface, member):
        if fields_path(msg) != PATH:
            return new_error(msg, "org.freedesktop.DBus.Error.UnknownObject", "s",
                             (f"no object at {fields_path(msg)}",))
        if member == "Introspect" and iface in (None, "org.freedesktop.DBus.Introspectable"):
            return new_method_return(msg, "s", (INTROSPECTION,))
        if member == "Ping" and iface in (None, "org.freedesktop.DBus.Peer"):
            return new_method_return(msg)
        if iface in (None, IFACE):
            if member == "Notify":
                return self.notify(msg)
            if member == "GetCapabilities":
                return new_method_return(msg, "as", (["body", "actions"],))
            if member == "GetServerInformation":
                return new_method_return(msg, "ssss", ("tk-test-notifyd", "torchkeeper tests", "1.0", "1.2"))
            if member == "CloseNotification":
                (nid,) = msg.body
                self.signal("NotificationClosed", "uu", (nid, 3))
                return new_method_return(msg)
        if iface in (None, TEST_IFACE) and member == "InvokeAction":
            nid, key = msg.body
            self.signal("ActionInvoked", "us", (nid, key))
            return new_method_return(msg)
        return new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s",
                         (f"unknown method {iface}.{member}",))

    def notify(self, msg):
        app_name, replaces_id, app_icon, summary, body, actions, hints, expire = msg.body
        nid = replaces_id or self.next_id
        if not replaces_id:
            self.next_id += 1
        if self.record:
            self.record.write(json.dumps({
                "id": nid, "app_name": app_name, "replaces_id": replaces_id, "app_icon": app_icon,
                "summary": summary, "body": body, "actions": list(actions),
                "hints": {k: _plain(v) for k, v in hints.items()}, "expire_timeout": expire,
            }) + "\n")
            self.record.flush()
        return new_method_return(msg, "u", (nid,))


def fields_path(msg):
    return msg.header.fields.get(HeaderFields.path)


def write_ready(path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"address": os.environ["DBUS_SESSION_BUS_ADDRESS"], "pid": os.getpid()}, f)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready", required=True, help="file to write the bus address to when ready")
    ap.add_argument("--record", help="JSON lines, one per Notify call")
    ap.add_argument("--bus-only", action="store_true", help="do not own the notification name")
    ap.add_argument("--hang", action="store_true", help="own the name but never answer (a hung server)")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn = open_dbus_connection(bus="SESSION")
    if not args.bus_only:
        reply = conn.send_and_get_reply(message_bus.RequestName(NAME, 4), timeout=10)  # 4: do not queue
        if reply.body != (1,):  # 1: primary owner
            print(f"could not own {NAME}: {reply.body}", file=sys.stderr)
            return 1
    server = Server(conn, args.record)
    write_ready(args.ready)
    try:
        while True:
            msg = conn.receive()
            if msg.header.message_type == MessageType.method_call and not (args.bus_only or args.hang):
                server.handle(msg)
    except (ConnectionError, OSError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
