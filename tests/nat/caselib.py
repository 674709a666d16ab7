#!/usr/bin/env python3
"""Helpers of tests/nat/cases.sh (stdlib only).

  caselib.py sample DIR [--docs 200] [--bytes 3145728]
      Write DIR/sample.jsonl (DOCS small docs doc-000.. and one doc "att" whose attachment
      blob.bin holds BYTES random bytes from /dev/urandom) and print the blob's sha256.
  caselib.py extra FILE PREFIX N
      Write N small docs PREFIX-000.. as JSON lines to FILE.
  caselib.py path FILE...
      The link path the CLI reported, from its outputs (files in the order given; the first
      line found wins): the JSON event {"event":"link_ready",...,"path":{"local","remote",
      "relay"}} or a human line `link direct (L <-> R)` / `link via relay (TURN over UDP|TCP)`.
      Prints one of
          direct LOCAL REMOTE
          relay udp|tcp LOCAL REMOTE     (LOCAL/REMOTE "-" when the human line does not say)
          none
      plus, on a second line, the line it was read from.
  caselib.py count-links FILE...
      How many link lines (JSON link_ready or human) the files hold.
  caselib.py share-listed NAME        (stdin: the hub's _all_docs?include_docs=true)
      Exit 0 if a share document named NAME is listed.
  caselib.py att-sha                  (stdin: a document with inline attachments)
      Print the sha256 of the decoded bytes of attachment blob.bin.
  caselib.py doc-ids                  (stdin: _all_docs or `docs FILE all` output)
      Print the ids, sorted, one per line (design documents and _local ones excluded).
  caselib.py field NAME               (stdin: a JSON object) print a top-level field.
  caselib.py signals CHANGES_FILE HUB_DB_URL
      Read a continuous _changes feed (include_docs) captured during a case, fetch every
      revision still stored of every document it names (so signals deleted once consumed are
      seen with their content), and check every ICE candidate in signal documents (trickled
      candidates and a=candidate lines of offers/answers): exit 0 only if there is at least one
      and every one is `typ relay`. Prints a summary and each offending candidate.
"""
import base64
import hashlib
import json
import os
import re
import sys
import urllib.parse
import urllib.request

HUMAN_DIRECT = re.compile(r"link direct \((host|srflx|prflx|relay) <-> (host|srflx|prflx|relay)\)")
HUMAN_RELAY = re.compile(r"link via relay \(TURN over (UDP|TCP)\)")
# Our side reaches the peer's relayed address from one of ours: reported as a direct pair
# whose remote end is a relay.
HUMAN_PEER_RELAY = re.compile(r"link via relay \((host|srflx|prflx) <-> relay, the peer's TURN server\)")
SHARE_TYPE = "com.stemstorage.peerpouch.share"
SIGNAL_TYPE = "com.stemstorage.peerpouch.signal"


def cmd_sample(args):
    out_dir = args[0]
    ndocs = int(opt(args, "--docs", 200))
    nbytes = int(opt(args, "--bytes", 3 * 1024 * 1024))
    with open("/dev/urandom", "rb") as f:
        blob = f.read(nbytes)
    with open(os.path.join(out_dir, "sample.jsonl"), "w") as f:
        for i in range(ndocs):
            f.write(json.dumps({"_id": f"doc-{i:03d}", "n": i, "text": f"small document number {i}"}) + "\n")
        f.write(
            json.dumps(
                {
                    "_id": "att",
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


def opt(args, name, default):
    if name in args:
        return args[args.index(name) + 1]
    return default


def cmd_extra(args):
    path, prefix, n = args[0], args[1], int(args[2])
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"_id": f"{prefix}-{i:03d}", "n": i, "text": "written during the case"}) + "\n")


def link_lines(paths):
    for p in paths:
        try:
            with open(p, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parsed = parse_link(line)
            if parsed:
                yield parsed, line


def parse_link(line):
    s = line.strip()
    if s.startswith("{") and "link_ready" in s:
        try:
            ev = json.loads(s)
        except ValueError:
            ev = None
        if isinstance(ev, dict) and ev.get("event") == "link_ready":
            path = ev.get("path") or {}
            local = str(path.get("local") or "-")
            remote = str(path.get("remote") or "-")
            relay = path.get("relay")
            if relay:
                return f"relay {str(relay).lower()} {local} {remote}"
            return f"direct {local} {remote}"
    m = HUMAN_RELAY.search(s)
    if m:
        return f"relay {m.group(1).lower()} - -"
    m = HUMAN_DIRECT.search(s)
    if m:
        return f"direct {m.group(1)} {m.group(2)}"
    m = HUMAN_PEER_RELAY.search(s)
    if m:
        return f"direct {m.group(1)} relay"
    return None


def cmd_path(args):
    for parsed, line in link_lines(args):
        print(parsed)
        print(line.strip())
        return 0
    print("none")
    print("")
    return 0


def cmd_count_links(args):
    print(sum(1 for _ in link_lines(args)))


def cmd_share_listed(args):
    name = args[0]
    try:
        body = json.load(sys.stdin)
    except ValueError:
        return 1
    for row in body.get("rows", []):
        doc = row.get("doc") or {}
        if doc.get("type") == SHARE_TYPE and doc.get("name") == name and not doc.get("_deleted"):
            return 0
    return 1


def cmd_att_sha(args):
    doc = json.load(sys.stdin)
    att = (doc.get("_attachments") or {}).get("blob.bin") or {}
    data = att.get("data")
    if not isinstance(data, str):
        print("no inline data for blob.bin", file=sys.stderr)
        return 1
    print(hashlib.sha256(base64.b64decode(data)).hexdigest())


def cmd_doc_ids(args):
    body = json.load(sys.stdin)
    rows = body.get("rows", []) if isinstance(body, dict) else body
    ids = sorted(
        r.get("id") or r.get("_id") for r in rows if not str(r.get("id") or r.get("_id")).startswith(("_design/", "_local/"))
    )
    for i in ids:
        print(i)


def cmd_field(args):
    body = json.load(sys.stdin)
    v = body.get(args[0])
    print(json.dumps(v) if not isinstance(v, str) else v)


def http_json(url):
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as r:
        return json.loads(r.read())


def candidates_of(doc):
    """(where, candidate line) for every candidate a signal document carries."""
    out = []
    data = doc.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            data = {"raw": data}
    if not isinstance(data, dict):
        return out
    cand = data.get("candidate")
    if isinstance(cand, dict):
        cand = cand.get("candidate")
    if isinstance(cand, str) and cand.strip():
        out.append(("trickle", cand.strip()))
    sdp = data.get("sdp")
    if isinstance(sdp, str):
        for line in sdp.splitlines():
            if line.startswith("a=candidate"):
                out.append((f"sdp {data.get('type', '?')}", line.strip()))
    return out


def cmd_signals(args):
    changes_file, db_url = args[0], args[1].rstrip("/")
    docs = []
    ids = []
    with open(changes_file, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "id" not in row:
                continue
            ids.append(row["id"])
            if isinstance(row.get("doc"), dict):
                docs.append(row["doc"])
    fetched = 0
    for doc_id in dict.fromkeys(ids):
        q = urllib.parse.quote(doc_id, safe="")
        try:
            leaves = http_json(f"{db_url}/{q}?open_revs=all&revs=true")
        except Exception as e:  # noqa: BLE001 - reported, the feed content still counts
            print(f"cannot fetch revisions of {doc_id}: {e}")
            continue
        for leaf in leaves:
            d = leaf.get("ok") or {}
            revs = d.get("_revisions") or {}
            start = revs.get("start", 0)
            for i, h in enumerate(revs.get("ids", [])):
                rev = f"{start - i}-{h}"
                try:
                    docs.append(http_json(f"{db_url}/{q}?rev={rev}"))
                    fetched += 1
                except Exception:  # noqa: BLE001 - a compacted revision has no body
                    pass
    signals = [d for d in docs if d.get("type") == SIGNAL_TYPE or str(d.get("_id", "")).find("signal") >= 0]
    seen = {}
    for d in signals:
        for where, c in candidates_of(d):
            seen[(where, c)] = d.get("_id")
    by_type = {}
    bad = []
    for (where, c), doc_id in seen.items():
        m = re.search(r"\btyp (\w+)", c)
        t = m.group(1) if m else "?"
        by_type[t] = by_type.get(t, 0) + 1
        if t != "relay":
            bad.append(f"{doc_id} ({where}): {c}")
    print(
        f"feed rows {len(ids)}, documents {len(set(ids))}, revisions fetched {fetched}, "
        f"signal bodies {len(signals)}, distinct candidates by type {by_type or '{}'}"
    )
    for b in bad:
        print(f"NOT RELAY: {b}")
    if bad:
        return 1
    if by_type.get("relay", 0) == 0:
        print("no relay candidate seen in any signal document")
        return 1
    return 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "sample": cmd_sample,
        "extra": cmd_extra,
        "path": cmd_path,
        "count-links": cmd_count_links,
        "share-listed": cmd_share_listed,
        "att-sha": cmd_att_sha,
        "doc-ids": cmd_doc_ids,
        "field": cmd_field,
        "signals": cmd_signals,
    }[cmd]
    return fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
