#!/usr/bin/env python3
"""A logging TCP proxy for fuzz seeds: real clients' bytes, recorded one file per connection.

    fuzz_capture.py LISTEN_PORT TARGET_HOST:TARGET_PORT OUT_PREFIX [--max-bytes N]

Each accepted connection is relayed to the target; what the client sent is written to
OUT_PREFIX-<n>.c2s and what the server sent to OUT_PREFIX-<n>.s2c (each cut at --max-bytes,
default 64 KiB, so seeds stay small). Used by scripts/fuzz.sh --capture to record NBD
handshakes and request streams from qemu-io / nbdinfo against a real server.
"""
import argparse
import socket
import threading


def pump(src, dst, log, limit):
    kept = 0
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if kept < limit:
                log.write(b[: limit - kept])
                kept += len(b)
            dst.sendall(b)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("target")
    ap.add_argument("prefix")
    ap.add_argument("--max-bytes", type=int, default=64 * 1024)
    ap.add_argument("--connections", type=int, default=1000)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", a.port))
    ls.listen(16)
    print("ready", flush=True)
    for n in range(a.connections):
        c, _ = ls.accept()
        s = socket.create_connection((host, int(port)))
        c2s = open(f"{a.prefix}-{n}.c2s", "wb")
        s2c = open(f"{a.prefix}-{n}.s2c", "wb")
        t1 = threading.Thread(target=pump, args=(c, s, c2s, a.max_bytes))
        t2 = threading.Thread(target=pump, args=(s, c, s2c, a.max_bytes))
        t1.start(); t2.start()
        t1.join(); t2.join()
        c2s.close(); s2c.close(); c.close(); s.close()


if __name__ == "__main__":
    main()
