#!/usr/bin/env python3
"""Runs one transfer for scripts/bench and prints what it cost.

    measure.py --port P --proto tcp|udp --server CMD [--stop-server] --client CMD
    measure.py --single --client CMD --client-out FILE

Starts the receiving side (a shell command) and waits until it listens on 127.0.0.1:P
(read from /proc/net/{tcp,udp}, so nothing connects to it early); then runs the sending
side and times it. A server that exits by itself after the transfer (socat, mbuffer,
`sshd -d`, which exits 255 after its one connection) is waited for; with --stop-server it gets SIGTERM once the client is done
(`fjord-recv serve`, which runs until killed; the client's exit 0 already means the
receiver stored and verified the stream).

With --single there is no server command: the client is one process holding both sides
(the quinn_bulk example, a thread each) and prints one JSON line (to --client-out) with
`send_cpu_s`, the sending thread's CPU seconds. The sending side's CPU is that figure,
the receiving side's is the rest of the process's; both sides' peak RSS is the process's.

Prints one line: wall send_cpu recv_cpu send_rss_kib recv_rss_kib
  wall:     the client, from its start to its exit (the transfer, as a user waits for it);
  cpu:      user + system seconds of every process of that side, as GNU time reports it
            (a process's figures include all descendants it reaped, so sshd's session
            children count on the receiving side, zstd and ssh on the sending side);
  rss:      the largest peak RSS of any process of that side.
Each side runs under /usr/bin/time rather than being measured from here: a process
exec'd straight from Python would report Python's own RSS (Linux keeps the pre-exec
high-water mark).
Exits non-zero, with the side's stderr, if either side fails or times out.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def listening(port: int, proto: str) -> bool:
    tables = ["/proc/net/tcp", "/proc/net/tcp6"] if proto == "tcp" else ["/proc/net/udp", "/proc/net/udp6"]
    want = f":{port:04X}"
    for t in tables:
        try:
            with open(t) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[1].endswith(want) and (proto == "udp" or cols[3] == "0A"):
                        return True
        except FileNotFoundError:
            pass
    return False


def timed(cmd: str, out: str) -> list:
    return ["/usr/bin/time", "-f", "%U %S %M", "-o", out, "bash", "-c", cmd]


def read_time(path: str) -> tuple:
    # The last line; GNU time puts "Command terminated by signal 15" etc. above it.
    u, s, m = open(path).read().strip().splitlines()[-1].split()
    return float(u) + float(s), int(m)


def children(pid: int) -> list:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", choices=["tcp", "udp"], required=True)
    ap.add_argument("--server")
    ap.add_argument("--single", action="store_true", help="no server: the client holds both sides")
    ap.add_argument("--client-out", help="where the client's stdout goes (default: nowhere)")
    ap.add_argument("--client", required=True)
    ap.add_argument("--stop-server", action="store_true")
    ap.add_argument("--server-ok", type=int, action="append", default=[0],
                    help="another exit status that counts as success (`sshd -d` exits 255)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--log", required=True, help="prefix for the sides' stderr files")
    a = ap.parse_args()
    if a.single:
        return single(a)
    if a.server is None:
        ap.error("--server is needed without --single")

    with open(a.log + ".server.err", "w") as serr:
        server = subprocess.Popen(timed(a.server, a.log + ".server.time"), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=serr, start_new_session=True)
    deadline = time.monotonic() + 30
    while not listening(a.port, a.proto):
        if server.poll() is not None or time.monotonic() > deadline:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            sys.stderr.write(f"measure: server did not listen on port {a.port}\n")
            sys.stderr.write(open(a.log + ".server.err").read())
            return 1
        time.sleep(0.01)

    crc, wall = run_client(a, subprocess.DEVNULL)

    if a.stop_server and server.poll() is None:
        # SIGTERM the server itself (time's child), so that time lives to report it.
        for c in children(server.pid):
            os.kill(c, signal.SIGTERM)
    try:
        src = server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        src = "timeout"

    # GNU time exits with its child's status, 128 + N for a signal.
    ok_server = src in a.server_ok or (a.stop_server and src == 128 + signal.SIGTERM)
    if crc != 0 or not ok_server:
        sys.stderr.write(f"measure: client exit {crc}, server exit {src}\n")
        sys.stderr.write("--- client stderr\n" + open(a.log + ".client.err").read())
        sys.stderr.write("--- server stderr\n" + open(a.log + ".server.err").read()[-4000:])
        return 1

    scpu, srss = read_time(a.log + ".server.time")
    ccpu, crss = read_time(a.log + ".client.time")
    print(f"{wall:.4f} {ccpu:.2f} {scpu:.2f} {crss} {srss}")
    return 0


def run_client(a, stdout):
    """Runs the client under time(1) with its stderr in LOG.client.err; its exit
    status (or "timeout") and wall-clock seconds."""
    with open(a.log + ".client.err", "w") as cerr:
        t0 = time.monotonic()
        client = subprocess.Popen(timed(a.client, a.log + ".client.time"), stdin=subprocess.DEVNULL,
                                  stdout=stdout, stderr=cerr)
        try:
            crc = client.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
            crc = "timeout"
        return crc, time.monotonic() - t0


def single(a) -> int:
    if not a.client_out:
        sys.stderr.write("measure: --single needs --client-out\n")
        return 1
    with open(a.client_out, "w") as cout:
        crc, wall = run_client(a, cout)
    if crc != 0:
        sys.stderr.write(f"measure: exit {crc}\n--- stderr\n" + open(a.log + ".client.err").read())
        return 1
    cpu, rss = read_time(a.log + ".client.time")
    try:
        lines = [ln for ln in open(a.client_out).read().splitlines() if ln.startswith("{")]
        send = float(json.loads(lines[-1])["send_cpu_s"])
    except (IndexError, KeyError, ValueError) as e:
        sys.stderr.write(f"measure: no JSON line with send_cpu_s in {a.client_out}: {e}\n")
        return 1
    send = min(send, cpu)
    print(f"{wall:.4f} {send:.2f} {cpu - send:.2f} {rss} {rss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
