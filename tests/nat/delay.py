#!/usr/bin/env python3
"""A user-space delay line for benchmarks (these kernels have no netem). Stdlib only.

  delay.py udp --listen HOST:PORT --target HOST:PORT [--delay-ms 20] [--loss 0.005] [--seed 1]
      Forward every datagram arriving at --listen to --target (one upstream socket per client
      address, so replies find their way back) and every reply back to its client. Each packet is
      held --delay-ms in each direction, and a fraction --loss of them is dropped, independently
      per direction.
  delay.py tcp --listen HOST:PORT --target HOST:PORT [--delay-ms 20]
      Same delay on byte streams: every chunk read from one side is written to the other side
      --delay-ms later, in order; an end of stream is passed on (shutdown) after the same delay.
      No loss for TCP.
  Both print "listening on HOST:PORT" on stdout once ready and, when stopped (SIGINT/SIGTERM),
  their counters on stderr.

  Test helpers:
  delay.py echo udp|tcp --listen HOST:PORT        echo server
  delay.py ping udp|tcp --target HOST:PORT [--count N] [--interval-ms I] [--size B]
      Send N numbered messages, print "sent, received, lost, loss %, rtt min/median/avg/max ms"
      and (udp) a digest of which sequence numbers were lost.

Determinism: drops come from a seeded random stream per flow and direction
(random.Random(f"{seed}/{flow}/{direction}"), flow = 0, 1, ... in order of the first packet of
each client address): the k-th packet of a direction of a flow is dropped or not the same way in
every run with the same seed, however packets interleave. Delays are wall-clock, so their
precision is the scheduler's (about 0.1-1 ms here).
Addresses are IPv4 a.b.c.d:port or IPv6 [addr]:port.
"""
import argparse
import collections
import errno
import hashlib
import heapq
import itertools
import random
import selectors
import signal
import socket
import statistics
import sys
import threading
import time

CHUNK = 65536
TCP_QUEUE_LIMIT = 4 << 20  # bytes held per direction before we stop reading the sender


def parse_addr(text):
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host, int(port)
    host, _, port = text.rpartition(":")
    if not host or not port:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def fmt(addr):
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Stop(Exception):
    pass


def install_stop_signals():
    def handler(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Timers:
    """Deadlines in a heap: (due, seq, callback)."""

    def __init__(self):
        self.heap = []
        self.seq = itertools.count()

    def at(self, due, callback):
        heapq.heappush(self.heap, (due, next(self.seq), callback))

    def timeout(self, now):
        if not self.heap:
            return None
        return max(0.0, self.heap[0][0] - now)

    def fire(self, now):
        while self.heap and self.heap[0][0] <= now:
            _, _, cb = heapq.heappop(self.heap)
            cb()


# ------------------------------------------------------------------------------------------
# UDP


def big_buffers(sock):
    for s in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, s, 4 << 20)
        except OSError:
            pass


class UdpFlow:
    def __init__(self, index, client, target, seed):
        self.index = index
        self.client = client
        self.up = socket.socket(family_of(target[0]), socket.SOCK_DGRAM)
        # As large as the listening socket's: a burst of replies must not overflow the kernel's
        # default (~200 KiB) before we read it, a loss the counters would not show.
        big_buffers(self.up)
        self.up.connect(target)
        self.up.setblocking(False)
        self.rng_up = random.Random(f"{seed}/{index}/up")
        self.rng_down = random.Random(f"{seed}/{index}/down")
        self.last = time.monotonic()


def run_udp(args):
    listen, target = args.listen, args.target
    delay = args.delay_ms / 1000.0
    lsock = socket.socket(family_of(listen[0]), socket.SOCK_DGRAM)
    lsock.bind(listen)
    lsock.setblocking(False)
    big_buffers(lsock)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    timers = Timers()
    flows = {}
    counts = collections.Counter()
    install_stop_signals()
    print(f"listening on {fmt(lsock.getsockname())}", flush=True)

    def send_up(flow, data):
        try:
            flow.up.send(data)
            counts["up_sent"] += 1
        except OSError:
            counts["up_send_errors"] += 1

    def send_down(flow, data):
        try:
            lsock.sendto(data, flow.client)
            counts["down_sent"] += 1
        except OSError:
            counts["down_send_errors"] += 1

    try:
        while True:
            now = time.monotonic()
            for key, _ in sel.select(timers.timeout(now)):
                now = time.monotonic()
                if key.data is None:
                    while True:
                        try:
                            data, src = lsock.recvfrom(CHUNK)
                        except BlockingIOError:
                            break
                        flow = flows.get(src)
                        if flow is None:
                            flow = UdpFlow(len(flows), src, target, args.seed)
                            flows[src] = flow
                            sel.register(flow.up, selectors.EVENT_READ, flow)
                        flow.last = now
                        counts["up_in"] += 1
                        if flow.rng_up.random() < args.loss:
                            counts["up_dropped"] += 1
                            continue
                        timers.at(now + delay, lambda f=flow, d=data: send_up(f, d))
                else:
                    flow = key.data
                    while True:
                        try:
                            data = flow.up.recv(CHUNK)
                        except BlockingIOError:
                            break
                        except OSError:  # e.g. ICMP port unreachable from the target
                            counts["up_recv_errors"] += 1
                            break
                        counts["down_in"] += 1
                        if flow.rng_down.random() < args.loss:
                            counts["down_dropped"] += 1
                            continue
                        timers.at(now + delay, lambda f=flow, d=data: send_down(f, d))
            timers.fire(time.monotonic())
    except Stop:
        pass
    print(
        f"udp {fmt(lsock.getsockname())} -> {fmt(target)}: flows={len(flows)} "
        + " ".join(f"{k}={counts[k]}" for k in sorted(counts)),
        file=sys.stderr,
        flush=True,
    )
    return 0


# ------------------------------------------------------------------------------------------
# TCP


class Direction:
    """Bytes read from `src`, written to `dst` after the delay."""

    def __init__(self, pair, src, dst, name):
        self.pair, self.src, self.dst, self.name = pair, src, dst, name
        self.queue = collections.deque()  # (due, bytes or None for end of stream)
        self.queued = 0
        self.pending = b""  # the head being written (partially written already)
        self.reading = True
        self.eof_read = False
        self.done = False  # end of stream delivered (or the direction failed)


class TcpPair:
    def __init__(self, fwd, client, up):
        self.fwd = fwd
        self.client, self.up = client, up
        self.connected = False
        self.c2u = Direction(self, client, up, "up")
        self.u2c = Direction(self, up, client, "down")
        self.closed = False


class TcpForwarder:
    def __init__(self, args):
        self.args = args
        self.delay = args.delay_ms / 1000.0
        self.sel = selectors.DefaultSelector()
        self.timers = Timers()
        self.masks = {}
        self.counts = collections.Counter()

    def set_mask(self, sock, mask, data):
        old = self.masks.get(sock)
        if mask == 0:
            if old is not None:
                self.sel.unregister(sock)
                del self.masks[sock]
        elif old is None:
            self.sel.register(sock, mask, data)
            self.masks[sock] = mask
        elif old != mask:
            self.sel.modify(sock, mask, data)
            self.masks[sock] = mask

    def update(self, pair):
        if pair.closed:
            return
        for sock in (pair.client, pair.up):
            mask = 0
            for d in (pair.c2u, pair.u2c):
                if d.src is sock and d.reading and not d.eof_read and (sock is pair.client or pair.connected):
                    mask |= selectors.EVENT_READ
                if d.dst is sock and d.pending:
                    mask |= selectors.EVENT_WRITE
            if sock is pair.up and not pair.connected:
                mask |= selectors.EVENT_WRITE
            self.set_mask(sock, mask, pair)

    def close(self, pair):
        if pair.closed:
            return
        pair.closed = True
        for sock in (pair.client, pair.up):
            self.set_mask(sock, 0, None)
            sock.close()
        self.counts["closed"] += 1

    def maybe_finish(self, pair):
        if pair.c2u.done and pair.u2c.done:
            self.close(pair)

    def read(self, pair, d):
        try:
            data = d.src.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.close(pair)
            return
        now = time.monotonic()
        if not data:
            d.eof_read = True
            d.queue.append((now + self.delay, None))
        else:
            self.counts[f"{d.name}_bytes"] += len(data)
            d.queue.append((now + self.delay, data))
            d.queued += len(data)
            if d.queued >= TCP_QUEUE_LIMIT:
                d.reading = False
        self.timers.at(now + self.delay, lambda: self.flush(pair, d))

    def flush(self, pair, d):
        """Write what is due (and whatever was left over) to d.dst."""
        if pair.closed or not pair.connected:
            return
        now = time.monotonic()
        while True:
            if not d.pending:
                if not d.queue or d.queue[0][0] > now:
                    break
                _, data = d.queue.popleft()
                if data is None:
                    try:
                        d.dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    d.done = True
                    self.maybe_finish(pair)
                    return
                d.pending = data
            try:
                n = d.dst.send(d.pending)
            except BlockingIOError:
                break
            except OSError:
                self.close(pair)
                return
            d.queued -= n
            d.pending = d.pending[n:]
            if d.pending:
                break
        if not d.reading and d.queued < TCP_QUEUE_LIMIT // 2:
            d.reading = True
        self.update(pair)

    def accept(self, lsock):
        try:
            client, _ = lsock.accept()
        except BlockingIOError:
            return
        client.setblocking(False)
        target = self.args.target
        up = socket.socket(family_of(target[0]), socket.SOCK_STREAM)
        up.setblocking(False)
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = TcpPair(self, client, up)
        err = up.connect_ex(target)
        if err not in (0, errno.EINPROGRESS):
            client.close()
            up.close()
            self.counts["connect_failed"] += 1
            return
        self.counts["accepted"] += 1
        self.update(pair)

    def event(self, pair, sock, mask):
        if pair.closed:
            return
        if sock is pair.up and not pair.connected and mask & selectors.EVENT_WRITE:
            if pair.up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.counts["connect_failed"] += 1
                self.close(pair)
                return
            pair.connected = True
            self.flush(pair, pair.c2u)
            self.update(pair)
            return
        if mask & selectors.EVENT_READ:
            for d in (pair.c2u, pair.u2c):
                if d.src is sock and not pair.closed:
                    self.read(pair, d)
        if mask & selectors.EVENT_WRITE and not pair.closed:
            for d in (pair.c2u, pair.u2c):
                if d.dst is sock:
                    self.flush(pair, d)
        self.update(pair)

    def run(self):
        listen = self.args.listen
        lsock = socket.socket(family_of(listen[0]), socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(listen)
        lsock.listen(128)
        lsock.setblocking(False)
        self.sel.register(lsock, selectors.EVENT_READ, None)
        bound = lsock.getsockname()
        install_stop_signals()
        print(f"listening on {fmt(lsock.getsockname())}", flush=True)
        try:
            while True:
                now = time.monotonic()
                for key, mask in self.sel.select(self.timers.timeout(now)):
                    if key.data is None:
                        self.accept(lsock)
                    else:
                        self.event(key.data, key.fileobj, mask)
                self.timers.fire(time.monotonic())
        except Stop:
            pass
        print(
            f"tcp {fmt(bound)} -> {fmt(self.args.target)}: "
            + " ".join(f"{k}={self.counts[k]}" for k in sorted(self.counts)),
            file=sys.stderr,
            flush=True,
        )
        return 0


# ------------------------------------------------------------------------------------------
# Test helpers: echo and ping


def run_echo(args):
    listen = args.listen
    install_stop_signals()
    if args.proto == "udp":
        s = socket.socket(family_of(listen[0]), socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(listen)
        print(f"listening on {fmt(s.getsockname())}", flush=True)
        try:
            while True:
                data, src = s.recvfrom(CHUNK)
                s.sendto(data, src)
        except Stop:
            return 0
    s = socket.socket(family_of(listen[0]), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(listen)
    s.listen(16)
    print(f"listening on {fmt(s.getsockname())}", flush=True)

    def serve(c):
        with c:
            while True:
                data = c.recv(CHUNK)
                if not data:
                    return
                c.sendall(data)

    try:
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    except Stop:
        return 0


def report(sent, rtts, lost_seqs=None):
    received = len(rtts)
    lost = sent - received
    line = f"sent={sent} received={received} lost={lost} loss={100.0 * lost / max(sent, 1):.3f}%"
    if rtts:
        ms = [r * 1000 for r in rtts]
        line += (
            f" rtt_ms min={min(ms):.2f} median={statistics.median(ms):.2f}"
            f" avg={statistics.fmean(ms):.2f} max={max(ms):.2f}"
        )
    if lost_seqs is not None:
        digest = hashlib.sha256(",".join(map(str, lost_seqs)).encode()).hexdigest()[:16]
        line += f" lost_seqs_sha256={digest} first_lost={lost_seqs[:8]}"
    print(line, flush=True)


def run_ping(args):
    target = args.target
    interval = args.interval_ms / 1000.0
    if args.proto == "tcp":
        s = socket.create_connection(target, timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for seq in range(args.count):
            msg = seq.to_bytes(8, "big") + bytes(max(0, args.size - 8))
            t0 = time.monotonic()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(len(msg) - len(got))
                if not chunk:
                    raise SystemExit("connection closed")
                got += chunk
            rtts.append(time.monotonic() - t0)
            if got != msg:
                raise SystemExit(f"echo mismatch at {seq}")
            time.sleep(interval)
        s.close()
        report(args.count, rtts)
        return 0
    s = socket.socket(family_of(target[0]), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect(target)
    s.setblocking(False)
    sent_at = {}
    rtts = {}

    def drain():
        while True:
            try:
                data = s.recv(CHUNK)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                continue
            seq = int.from_bytes(data[:8], "big")
            if seq in sent_at and seq not in rtts:
                rtts[seq] = time.monotonic() - sent_at[seq]

    start = time.monotonic()
    for seq in range(args.count):
        # Paced against the start time, so the rate does not drift with per-packet overhead.
        while time.monotonic() < start + seq * interval:
            drain()
            time.sleep(min(0.0005, interval))
        sent_at[seq] = time.monotonic()
        s.send(seq.to_bytes(8, "big") + bytes(max(0, args.size - 8)))
        drain()
    end = time.monotonic() + args.wait_ms / 1000.0
    while time.monotonic() < end and len(rtts) < args.count:
        drain()
        time.sleep(0.001)
    lost = [q for q in range(args.count) if q not in rtts]
    report(args.count, [rtts[q] for q in sorted(rtts)], lost)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for proto in ("udp", "tcp"):
        f = sub.add_parser(proto, help=f"{proto} delay line")
        f.add_argument("--listen", type=parse_addr, required=True)
        f.add_argument("--target", type=parse_addr, required=True)
        f.add_argument("--delay-ms", type=float, default=20.0)
        if proto == "udp":
            f.add_argument("--loss", type=float, default=0.005)
            f.add_argument("--seed", type=int, default=1)
    e = sub.add_parser("echo", help="echo server (test helper)")
    e.add_argument("proto", choices=("udp", "tcp"))
    e.add_argument("--listen", type=parse_addr, required=True)
    g = sub.add_parser("ping", help="measure RTT and loss (test helper)")
    g.add_argument("proto", choices=("udp", "tcp"))
    g.add_argument("--target", type=parse_addr, required=True)
    g.add_argument("--count", type=int, default=100)
    g.add_argument("--interval-ms", type=float, default=10.0)
    g.add_argument("--size", type=int, default=64)
    g.add_argument("--wait-ms", type=float, default=1000.0, help="udp: wait for late replies")
    args = p.parse_args()
    if args.cmd == "udp":
        if not 0.0 <= args.loss < 1.0:
            p.error("--loss must be in [0, 1)")
        return run_udp(args)
    if args.cmd == "tcp":
        return TcpForwarder(args).run()
    if args.cmd == "echo":
        return run_echo(args)
    return run_ping(args)


if __name__ == "__main__":
    sys.exit(main())
