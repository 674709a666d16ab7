#!/usr/bin/env python3
"""UDP probes for the NAT plumbing checks of tests/nat/run.sh --check (stdlib only).

  udpprobe.py reflect --bind IP --port P [--port P ...]
      Answer every datagram with "seen SRC_IP:SRC_PORT" (what the sender looks like from here:
      its NAT mapping). Prints "listening on IP:P,..." once every socket is bound; runs until
      killed.
  udpprobe.py probe --local-port L --to IP:P [--to IP:P ...] [--timeout S]
      From ONE socket bound to port L, ask each reflector what it sees; prints
      "IP:P sees MAPPED" per target. Exit 1 if one did not answer.
  udpprobe.py hold --local-port L [--open IP:P] --secs S
      Bind port L, optionally send "open" to IP:P (creating a NAT mapping), print "ready", then
      print "got SRC payload" for every datagram received during S seconds.
  udpprobe.py send --bind IP:P --to IP:P --msg TEXT
      Send one datagram from a given source address and port.

Addresses are IPv4 a.b.c.d:port or IPv6 [addr]:port.
"""
import argparse
import socket
import sys
import time


def parse_addr(text):
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port)
    host, _, port = text.rpartition(":")
    return host, int(port)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def fmt(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cmd_reflect(args):
    socks = []
    for port in args.port:
        s = socket.socket(family_of(args.bind), socket.SOCK_DGRAM)
        s.bind((args.bind, port))
        socks.append(s)
    print("listening on " + ",".join(fmt((args.bind, p)) for p in args.port), flush=True)
    import selectors

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            data, src = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(f"seen {fmt(src)}".encode(), src)


def cmd_probe(args):
    targets = [parse_addr(t) for t in args.to]
    s = socket.socket(family_of(targets[0][0]), socket.SOCK_DGRAM)
    s.bind(("::" if s.family == socket.AF_INET6 else "0.0.0.0", args.local_port))
    s.settimeout(args.timeout)
    ok = True
    for t in targets:
        seen = None
        for _ in range(3):
            s.sendto(b"probe", t)
            try:
                while True:
                    data, src = s.recvfrom(2048)
                    if (src[0], src[1]) == t:
                        seen = data.decode().removeprefix("seen ")
                        break
            except socket.timeout:
                continue
            break
        if seen is None:
            print(f"{fmt(t)} no answer", flush=True)
            ok = False
        else:
            print(f"{fmt(t)} sees {seen}", flush=True)
    return 0 if ok else 1


def cmd_hold(args):
    fam = family_of(parse_addr(args.open)[0]) if args.open else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", args.local_port))
    if args.open:
        s.sendto(b"open", parse_addr(args.open))
    print("ready", flush=True)
    end = time.monotonic() + args.secs
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, src = s.recvfrom(2048)
        except socket.timeout:
            break
        print(f"got {fmt(src)} {data.decode(errors='replace')}", flush=True)
    return 0


def cmd_send(args):
    src = parse_addr(args.bind)
    s = socket.socket(family_of(src[0]), socket.SOCK_DGRAM)
    s.bind(src)
    s.sendto(args.msg.encode(), parse_addr(args.to))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reflect")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, action="append", required=True)
    q = sub.add_parser("probe")
    q.add_argument("--local-port", type=int, required=True)
    q.add_argument("--to", action="append", required=True)
    q.add_argument("--timeout", type=float, default=1.0)
    h = sub.add_parser("hold")
    h.add_argument("--local-port", type=int, required=True)
    h.add_argument("--open")
    h.add_argument("--secs", type=float, required=True)
    s = sub.add_parser("send")
    s.add_argument("--bind", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--msg", required=True)
    args = p.parse_args()
    return {"reflect": cmd_reflect, "probe": cmd_probe, "hold": cmd_hold, "send": cmd_send}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
