#!/usr/bin/env python3
"""What an idle keep-alive connection costs a proxy, in resident memory.

    idle_conns.py HOST:PORT COUNT PID [PID ...]

Reads the proxy's RSS (summed over the PIDs given: for nginx, its worker), then opens COUNT
connections one after another, sends one GET / on each and reads the whole answer, and keeps
them all open. One at a time, so the proxy never needs more than one upstream connection and
what grows is the client side only. Reads the RSS again, checks how many connections the proxy
still holds open, closes them all and prints one line:

    opened=N still_open=N rss_before_kib=N rss_after_kib=N

Standard library only; exits non-zero (with the reason on stderr) when a request fails.
"""

import socket
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle_conns.py\r\n\r\n"


def rss_kib(pids):
    """Resident memory in KiB, summed over pids. smaps_rollup walks the page tables, so it is
    exact; /proc/PID/status's VmRSS comes from per-CPU counters that may lag by a few hundred
    KiB, as much as a thousand of nginx's idle connections cost."""
    total = 0
    for pid in pids:
        for name, key in (("smaps_rollup", "Rss:"), ("status", "VmRSS:")):
            try:
                with open(f"/proc/{pid}/{name}") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith(key))
                break
            except (OSError, StopIteration):
                continue
    return total


def read_response(sock):
    """Reads one HTTP/1.1 answer with a Content-Length; returns its status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before the answer's headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ConnectionError("answer without Content-Length: " + lines[0])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed in the body")
        body += chunk
    return status


def still_open(sock):
    """True when the proxy has not closed the connection (nothing to read, no EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    host, port = sys.argv[1].rsplit(":", 1)
    count = int(sys.argv[2])
    pids = sys.argv[3:]

    before = rss_kib(pids)
    conns = []
    try:
        for i in range(count):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(REQUEST)
            status = read_response(sock)
            if status != 200:
                sys.exit(f"idle_conns.py: connection {i + 1}: GET / answered {status}")
            conns.append(sock)
        after = rss_kib(pids)
        open_now = sum(1 for sock in conns if still_open(sock))
    except OSError as e:
        sys.exit(f"idle_conns.py: connection {len(conns) + 1} of {count}: {e}")
    finally:
        for sock in conns:
            sock.close()
    print(f"opened={len(conns)} still_open={open_now} rss_before_kib={before} rss_after_kib={after}")


if __name__ == "__main__":
    main()
