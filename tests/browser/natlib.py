#!/usr/bin/env python3
"""Helpers of tests/browser/nat.sh (Chromium behind NAT opening a share of a Rust node).

  natlib.py sample DIR [--docs N] [--bytes B]
      Write DIR/sample.jsonl (N documents doc-000.. and "big" with attachment blob.bin of B
      random bytes, base64) and print the attachment's SHA-256.
  natlib.py join --drive DRIVE.mjs --out RESULT.json --events EVENTS.log --timeout S --args JSON
      Run `node DRIVE.mjs` (in its own process group), open a page, call the `join` scenario
      with ARGS, write its result (or {"err": ...}) to RESULT.json, quit. The drive's stdout
      events go to EVENTS.log; its stderr is ours. Bounded: S seconds for the join, 30 s for
      the page, 10 s to quit; then the drive's process group is killed. Exit 0 on success.
  natlib.py shared SHARER.out
      Print the share id of the sharer's {"event":"shared"} line (exit 1 if none yet).
  natlib.py linked SHARER.out
      Exit 0 when the sharer printed a {"event":"link_ready"} line.
  natlib.py check --result RESULT.json --sharer SHARER.out --expect JSON [--coturn-log LOG]
      Assert the join's results and the path's consistency between the page (getStats) and the
      sharer (link_ready). Prints `observed: ...` lines on stdout; on failure prints the reason
      as its last stdout line and exits 1.
"""

import base64
import hashlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time


def opt(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    return default


# ---------------------------------------------------------------------------------------------


def cmd_sample(args):
    out_dir = args[0]
    ndocs = int(opt(args, "--docs", 20))
    nbytes = int(opt(args, "--bytes", 1024 * 1024))
    with open("/dev/urandom", "rb") as f:
        blob = f.read(nbytes)
    with open(os.path.join(out_dir, "sample.jsonl"), "w") as f:
        for i in range(ndocs):
            f.write(json.dumps({"_id": f"doc-{i:03d}", "n": i, "text": f"document {i}"}) + "\n")
        f.write(
            json.dumps(
                {
                    "_id": "big",
                    "kind": "attachment",
                    "_attachments": {
                        "blob.bin": {
                            "content_type": "application/octet-stream",
                            "data": base64.b64encode(blob).decode(),
                        }
                    },
                }
            )
            + "\n"
        )
    print(hashlib.sha256(blob).hexdigest())
    return 0


# ---------------------------------------------------------------------------------------------
# Running drive.mjs


class Drive:
    def __init__(self, drive, events_path):
        self.proc = subprocess.Popen(
            ["node", drive],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # ours: the drive's and the page's logs
            start_new_session=True,  # its own process group: Chromium goes with it
        )
        self.events = open(events_path, "a")
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.buf = b""
        self.next_id = 1

    def send(self, msg):
        msg = dict(msg, id=self.next_id)
        self.next_id += 1
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        return msg["id"]

    def lines(self, deadline):
        """Yield stdout lines (parsed) until the deadline."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    yield json.loads(line)
                except ValueError:
                    self.events.write(f"(not JSON) {line!r}\n")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self.sel.select(timeout=left):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return  # the drive exited
            self.buf += chunk

    def call(self, msg, secs):
        """Send a command and wait for its answer; events are logged. Returns (ok, value)."""
        want = self.send(msg)
        deadline = time.monotonic() + secs
        for m in self.lines(deadline):
            if "event" in m:
                self.events.write(json.dumps(m) + "\n")
                self.events.flush()
                continue
            if m.get("id") == want:
                if "err" in m:
                    return False, m["err"]
                return True, m.get("ok")
        if self.proc.poll() is not None:
            return False, f"drive.mjs exited ({self.proc.returncode}) before answering {msg.get('cmd')}"
        return False, f"no answer to {msg.get('cmd')} within {secs} s"

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.call({"cmd": "quit"}, 10)
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        self.events.close()

    def kill_group(self):
        # The group we created for the drive (node and the Chromium it launched).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            for _ in range(30):
                self.proc.poll()  # reap the leader (a zombie still counts as a member)
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)


def cmd_join(args):
    drive_path = opt(args, "--drive")
    out = opt(args, "--out")
    events = opt(args, "--events")
    secs = float(opt(args, "--timeout", 120))
    jargs = json.loads(opt(args, "--args"))
    drive = Drive(drive_path, events)

    def on_term(signum, _frame):
        drive.kill_group()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    result = None
    try:
        t0 = time.monotonic()
        ok, val = drive.call({"cmd": "open_page", "page": "a"}, 30)
        if not ok:
            result = {"err": f"open_page: {val}"}
        else:
            t1 = time.monotonic()
            ok, val = drive.call({"cmd": "call", "page": "a", "fn": "join", "args": jargs}, secs)
            t2 = time.monotonic()
            if ok:
                result = {"ok": val, "page_s": t1 - t0, "join_s": t2 - t1}
            else:
                result = {"err": f"join: {val}", "join_s": t2 - t1}
    finally:
        drive.stop()
        with open(out, "w") as f:
            json.dump(result if result is not None else {"err": "interrupted"}, f, indent=1)
    return 0 if result and "ok" in result else 1


# ---------------------------------------------------------------------------------------------
# The sharer's JSON lines


def sharer_events(path):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    evs = []
    for line in lines:
        s = line.strip()
        if s.startswith("{"):
            try:
                evs.append(json.loads(s))
            except ValueError:
                pass
    return evs


def cmd_shared(args):
    for ev in sharer_events(args[0]):
        if ev.get("event") == "shared" and ev.get("share"):
            print(ev["share"])
            return 0
    return 1


def cmd_linked(args):
    return 0 if any(ev.get("event") == "link_ready" for ev in sharer_events(args[0])) else 1


# ---------------------------------------------------------------------------------------------
# Checks


class Fail(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Fail(why)


def addr_of(side):
    """'ip:port' of a getStats candidate side (None if it has no address)."""
    if not side or not side.get("address"):
        return None
    a = side["address"]
    return f"[{a}]:{side['port']}" if ":" in a else f"{a}:{side['port']}"


def relay_ports(coturn_log):
    """The relayed addresses coturn handed out (its verbose log's 'relay addr' lines)."""
    try:
        with open(coturn_log, errors="replace") as f:
            text = f.read()
    except OSError:
        return set()
    return set(re.findall(r"[Rr]elay addr[^0-9]*([0-9.]+:[0-9]+)", text))


def cmd_check(args):
    observed = []
    try:
        check(args, observed)
    except Fail as e:
        for o in observed:
            print(f"observed: {o}")
        print(" ".join(str(e).split("\n")))
        return 1
    for o in observed:
        print(f"observed: {o}")
    return 0


def check(args, observed):
    with open(opt(args, "--result")) as f:
        wrapped = json.load(f)
    expect = json.loads(opt(args, "--expect"))
    coturn_log = opt(args, "--coturn-log")
    need("ok" in wrapped, f"the page's join failed: {str(wrapped.get('err')).splitlines()[0][:600]}")
    res = wrapped["ok"]
    ndocs = expect["docs"]

    # The page's path (getStats) and the sharer's link line.
    path = res.get("path") or {}
    loc, rem = path.get("local") or {}, path.get("remote") or {}
    observed.append(
        f"chromium (home b, symmetric NAT) selected pair: local {loc.get('type')} {addr_of(loc)}"
        f"{' (TURN over ' + str(loc.get('relayProtocol')) + ')' if loc.get('type') == 'relay' else ''}"
        f" <-> remote {rem.get('type')} {addr_of(rem)}; gathered {json.dumps(res.get('gathered'))}"
    )
    readies = [ev for ev in sharer_events(opt(args, "--sharer")) if ev.get("event") == "link_ready"]
    need(readies, "the sharer printed no link_ready line")
    ready = readies[-1]
    rp = ready.get("path") or {}
    observed.append(
        f"rust sharer (home a, cone NAT) link_ready: local {rp.get('local')} {rp.get('local_addr')}"
        f" relay={rp.get('relay')} <-> remote {rp.get('remote')} {rp.get('remote_addr')} (peer {ready.get('peer')})"
    )
    t = res.get("timings") or {}
    att = res.get("attachment") or {}
    observed.append(
        f"page: channels open {t.get('channel_open_ms', 0):.0f} ms, hellos checked {t.get('ready_ms', 0):.0f} ms "
        f"after the offer; {att.get('length')} B attachment in {att.get('ms', 0):.0f} ms "
        f"({att.get('mb_per_s', 0):.1f} MB/s); join {wrapped.get('join_s', 0):.1f} s"
    )

    need(path.get("local") and path.get("remote"), f"the page saw no selected candidate pair: {json.dumps(path)}")
    need(ready.get("peer") == res.get("peer"), f"the sharer's link is with {ready.get('peer')}, the page is {res.get('peer')}")
    need(rp.get("local") and rp.get("remote"), f"the sharer's link_ready has no path: {json.dumps(ready)}")

    # Consistency: the two ends describe the same pair.
    lt, rt = loc.get("type"), rem.get("type")
    if lt == "relay":
        # Chromium sends from its TURN allocation: the sharer sees that relayed address.
        need(loc.get("relayProtocol") == "udp", f"chromium's relay candidate is over {loc.get('relayProtocol')}, expected udp (turn:...?transport=udp)")
        need(rp.get("remote_addr") == addr_of(loc),
             f"chromium's local relay is {addr_of(loc)} but the sharer's remote is {rp.get('remote_addr')}")
        need(rp.get("remote") in ("relay", "prflx"),
             f"chromium's local candidate is relay, the sharer calls its remote {rp.get('remote')}")
        need(loc.get("address") == expect["turn_ip"], f"chromium's relay address {loc.get('address')} is not the TURN server's {expect['turn_ip']}")
    if rp.get("local") == "relay":
        need(rp.get("relay") == "udp", f"the sharer's relay is over {rp.get('relay')}, expected udp")
        need(addr_of(rem) == rp.get("local_addr"),
             f"the sharer's local relay is {rp.get('local_addr')} but chromium's remote is {addr_of(rem)}")
        need(rt in ("relay", "prflx"), f"the sharer's local candidate is relay, chromium calls its remote {rt}")
    if rt == "relay":
        need(rp.get("local") == "relay", f"chromium's remote is a relay ({addr_of(rem)}) but the sharer's local is {rp.get('local')}")
    if rp.get("remote") == "relay":
        need(lt == "relay", f"the sharer's remote is a relay ({rp.get('remote_addr')}) but chromium's local is {lt}")
    if rp.get("local") in ("host", "srflx") and rt in ("srflx", "prflx"):
        # The sharer's socket seen through home a's cone NAT: its router's address, same port.
        sport = str(rp.get("local_addr", "")).rsplit(":", 1)[-1]
        need(rem.get("address") == expect["a_public_ip"] and str(rem.get("port")) == sport,
             f"the sharer's local is {rp.get('local')} {rp.get('local_addr')} but chromium's remote is {addr_of(rem)} "
             f"(expected {expect['a_public_ip']}:{sport}, home a's router keeping the port)")
    relayed = lt == "relay" or rt == "relay"
    if not relayed:
        # A direct pair across the NATs: each side must see the other's public (router) address.
        need(rem.get("address") == expect["a_public_ip"], f"direct pair, but chromium's remote {addr_of(rem)} is not home a's router {expect['a_public_ip']}")
        need(str(rp.get("remote_addr", "")).startswith(expect["b_public_ip"] + ":"),
             f"direct pair, but the sharer's remote {rp.get('remote_addr')} is not home b's router {expect['b_public_ip']}")
    if expect.get("relay_both"):
        need(lt == "relay" and rt == "relay" and rp.get("local") == "relay" and rp.get("remote") in ("relay", "prflx"),
             f"relay-only on both sides, but the pair is {lt} <-> {rt} (sharer {rp.get('local')} <-> {rp.get('remote')})")
    if expect.get("relayed"):
        need(relayed, f"expected a relayed path, got chromium {lt} <-> {rt}")
    if relayed and coturn_log:
        ports = relay_ports(coturn_log)
        mine = [a for a in (addr_of(loc) if lt == "relay" else None, addr_of(rem) if rt == "relay" else None) if a]
        observed.append(f"coturn handed out relay addresses {sorted(ports)}; the pair uses {mine}")
        for a in mine:
            need(a in ports, f"relay address {a} of the pair is not among coturn's allocations {sorted(ports)}")
    observed.append(
        "path consistent: " + ("relayed" if relayed else "direct")
        + f" (chromium {lt} <-> {rt}, sharer {rp.get('local')} <-> {rp.get('remote')})"
    )

    # The calls went over that pair and it carried the attachment. Chromium may move to another
    # pair of the same kind while they run (seen once under a loaded CI machine: from its prflx
    # to the sharer's relay, over to its own relay to the sharer's srflx): that is ICE doing its
    # job, so a change is accepted when the new pair is as relayed as the expected path, and the
    # data is checked by the calls below either way.
    after = res.get("path_after") or {}
    same = addr_of(after.get("local")) == addr_of(loc) and addr_of(after.get("remote")) == addr_of(rem)
    if same:
        need((after.get("bytesReceived") or 0) >= expect["att_length"],
             f"the selected pair received {after.get('bytesReceived')} B, less than the {expect['att_length']} B attachment")
        observed.append(f"the pair carried {after.get('bytesReceived')} B to the page and {after.get('bytesSent')} B from it")
    else:
        alt, art = (after.get("local") or {}).get("type"), (after.get("remote") or {}).get("type")
        now_relayed = alt == "relay" or art == "relay"
        need(now_relayed or not expect.get("relayed"),
             f"the selected pair changed during the calls to one that is not relayed: {json.dumps(path)[:200]} -> {json.dumps(after)[:200]}")
        if expect.get("relay_both"):
            need(alt == "relay", f"relay-only, but chromium moved to a {alt} local candidate")
        observed.append(f"chromium moved to another pair during the calls: {lt} <-> {rt} -> {alt} <-> {art} "
                        f"(still relayed: {now_relayed}); the calls' data is checked below")

    # The calls.
    info = res.get("info") or {}
    need(info.get("doc_count") == ndocs, f"info.doc_count {info.get('doc_count')}, expected {ndocs}")
    ad = res.get("all_docs") or {}
    rows = ad.get("rows") or []
    need(len(rows) == 3 and ad.get("total_rows") == ndocs and all(r.get("doc") for r in rows),
         f"all_docs (limit 3, include_docs): {json.dumps(ad)[:300]}")
    g = (res.get("get") or {}).get("doc") or {}
    need(g.get("_id") == expect["get"] and g.get("n") == expect["get_n"] and g.get("_rev", "").startswith("1-")
         and (g.get("_revisions") or {}).get("start") == 1,
         f"get {expect['get']}: {json.dumps(g)[:300]}")
    need((res.get("missing") or {}).get("status") == 404, f"get of a missing doc: {json.dumps(res.get('missing'))}")
    need((res.get("destroy") or {}).get("status") == 403, f"destroy: {json.dumps(res.get('destroy'))}")
    bd = (res.get("bulk_docs") or {}).get("results")
    need(isinstance(bd, list) and len(bd) == 1 and bd[0].get("ok") and bd[0].get("id") == "from-browser",
         f"bulk_docs: {json.dumps(bd)[:300]}")
    live = {r["id"]: r for r in res.get("live") or []}
    need("from-browser" in live and live["from-browser"]["rev"] == bd[0].get("rev"),
         f"the live subscription did not show from-browser at its rev: {json.dumps(list(live))}")
    need(att.get("length") == expect["att_length"], f"attachment length {att.get('length')}, expected {expect['att_length']}")
    need(att.get("sha256") == expect["att_sha256"], f"attachment sha256 {att.get('sha256')}, expected {expect['att_sha256']}")
    need(att.get("md5_matches") is True, f"the attachment's bytes do not match its digest {att.get('digest')}")
    need((res.get("info_after") or {}).get("doc_count") == ndocs + 1,
         f"info after the write: doc_count {(res.get('info_after') or {}).get('doc_count')}, expected {ndocs + 1}")
    need(0 < (res.get("max_message_received") or 0) <= 65536, f"largest message {res.get('max_message_received')} B (limit 64 KiB)")
    observed.append(
        f"calls: info {ndocs} docs, all_docs 3 rows, get {expect['get']} rev {g.get('_rev')}, missing 404, destroy 403, "
        f"bulk_docs from-browser {bd[0].get('rev')}, live saw it, attachment {att.get('length')} B sha256 {att.get('sha256', '')[:16]}.. "
        f"(md5 digest ok), info after {ndocs + 1} docs"
    )


def main():
    cmds = {"sample": cmd_sample, "join": cmd_join, "shared": cmd_shared, "linked": cmd_linked, "check": cmd_check}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
