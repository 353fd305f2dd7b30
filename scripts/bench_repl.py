#!/usr/bin/env python3
"""Talk to a drl daemon's control socket for the replicated benchmarks (bench-nbd.sh,
bench-group.sh).

Usage:
  bench_repl.py wait SOCKET STATE TIMEOUT_S [RES,RES..]   wait until every resource (default
        r0) is in STATE:
        connected  the pair is Connected (any replication state)
        insync     Connected/Established, both UpToDate, nothing out of sync, queued or lagging
  bench_repl.py sample SOCKET OUT [PERIOD_S [RES,RES..]]  until SIGTERM, append "t_ms lag_ms
        send_queue_bytes out_of_sync_bytes RES" of every resource (default r0) to OUT every
        PERIOD_S (default 0.2) over one connection (a process per sample would cost more CPU
        than the thing measured on 2 cores)

One JSON-RPC connection, newline-delimited, as `drl status --json` uses.
"""

import json
import signal
import socket
import sys
import time


class Control:
    def __init__(self, path):
        self.path = path
        self.sock = None
        self.buf = b""
        self.next_id = 1

    def _connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)
        self.buf = b""

    def status(self, names=("r0",)):
        """{name: status object} of the resources `names` (all present), or None if the
        daemon does not answer (yet)."""
        try:
            if self.sock is None:
                self._connect()
            rid = self.next_id
            self.next_id += 1
            params = {"resource": names[0]} if len(names) == 1 else {}
            req = {"jsonrpc": "2.0", "id": rid, "method": "status", "params": params}
            self.sock.sendall(json.dumps(req).encode() + b"\n")
            while True:
                while b"\n" not in self.buf:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    self.buf += chunk
                line, self.buf = self.buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("id") == rid:
                    break
            res = {r.get("name"): r for r in msg.get("result", {}).get("resources", [])}
            return res if all(n in res for n in names) else None
        except (OSError, ValueError):
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            return None


def in_sync(r):
    return (
        r.get("connection") == "Connected"
        and r.get("replication") == "Established"
        and r.get("disk") == "UpToDate"
        and r.get("peer_disk") == "UpToDate"
        and r.get("out_of_sync_bytes") == 0
        and r.get("send_queue_bytes") == 0
        and not r.get("lag_ms")
    )


def reached(state, r):
    if state == "connected":
        return r.get("connection") == "Connected"
    return state == "insync" and in_sync(r)


def wait(path, state, timeout_s, names="r0"):
    names = tuple(names.split(","))
    ctl = Control(path)
    deadline = time.monotonic() + float(timeout_s)
    last = None
    while time.monotonic() < deadline:
        rs = ctl.status(names)
        if rs is not None:
            last = rs
            if all(reached(state, r) for r in rs.values()):
                return 0
        time.sleep(0.2)
    keys = ("role", "disk", "connection", "replication", "peer_disk", "out_of_sync_bytes",
            "send_queue_bytes", "lag_ms", "last_error")
    for n in names:
        r = (last or {}).get(n)
        summary = {k: r.get(k) for k in keys} if r else "no answer"
        sys.stderr.write(f"{n} on {path} not {state} after {timeout_s}s: {summary}\n")
    return 1


def sample(path, out, period_s=0.2, names="r0"):
    names = tuple(names.split(","))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ctl = Control(path)
    t0 = time.monotonic()
    with open(out, "a") as f:
        while not stop:
            rs = ctl.status(names)
            if rs is not None:
                t = int((time.monotonic() - t0) * 1000)
                for n in names:
                    r = rs[n]
                    f.write(f"{t} {r.get('lag_ms') or 0} {r.get('send_queue_bytes') or 0} "
                            f"{r.get('out_of_sync_bytes') or 0} {n}\n")
                f.flush()
            time.sleep(float(period_s))
    return 0


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "wait" and len(sys.argv) in (5, 6):
        return wait(*sys.argv[2:])
    if cmd == "sample" and len(sys.argv) in (4, 5, 6):
        return sample(*sys.argv[2:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
