"""Live traffic for the soak: a ping every 10 ms from every container to every other, and one TCP
stream whose receiver checks every byte against the sender's pattern.

Each ``Pinger`` runs ``ping -D -O -i 0.01`` in a container and reads its lines in a thread:
received sequence numbers go into a bitmap; ``no answer yet for icmp_seq=N`` (``-O``) gives the
time of a packet that may be lost; a lost one is a sequence number never answered.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time

from ..netns import in_ns

_LINE = re.compile(r"^\[(\d+\.\d+)\] (.*?)icmp_seq=(\d+)")
INTERVAL = 0.01


class Pinger:
    def __init__(self, src_ns: str, dst_ip: str, label: str, from_first_answer: bool = False) -> None:
        self.label = label
        self.received = bytearray()
        self.asked: dict[int, float] = {}  # seq -> wall time of "no answer yet"
        self.marks: list[tuple[int, float]] = []  # (seq, wall time) of every 100th answer
        self.max_seq = 0
        # the first packet counted: 1, the first answered one (a new host's pairs, which start before
        # its peers know it) or the one after ``mark`` (the soak's start, after the warm-up)
        self.from_seq: int | None = None if from_first_answer else 1
        self.stopped: float | None = None  # wall time of ``stop``
        self.started = time.time()
        self._base, self._last = 0, 0
        self.proc = subprocess.Popen(in_ns(src_ns, "ping", "-n", "-D", "-O", "-i", str(INTERVAL), dst_ip),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _unwrap(self, raw: int) -> int:
        if raw < self._last - 30000:
            self._base += 65536
        elif raw > self._last + 30000 and self._base:  # a late line from before the wrap
            return self._base - 65536 + raw
        self._last = raw
        return self._base + raw

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = _LINE.match(line)
            if not m:
                continue
            seq = self._unwrap(int(m.group(3)))
            self.max_seq = max(self.max_seq, seq)
            if "bytes from" in m.group(2):
                if len(self.received) <= seq:
                    self.received.extend(bytes(seq + 1024 - len(self.received)))
                self.received[seq] = 1
                if self.from_seq is None:
                    self.from_seq = seq
                if seq % 100 == 0:
                    self.marks.append((seq, float(m.group(1))))
            elif "no answer yet" in line:
                self.asked[seq] = float(m.group(1))

    def mark(self) -> None:
        """Count from the next packet on (the soak's start, after the warm-up)."""
        self.from_seq = self.max_seq + 1

    def stop(self) -> None:
        if self.stopped is None:
            self.stopped = time.time()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(timeout=5)

    def time_of(self, seq: int) -> float:
        """The wall time packet ``seq`` was sent, from the nearest answered hundreds around it."""
        i = bisect.bisect_left(self.marks, (seq, 0.0))
        before = self.marks[i - 1] if i > 0 else (0, self.started)
        after = self.marks[i] if i < len(self.marks) else None
        if after is None or after[0] == before[0]:
            return before[1] + (seq - before[0]) * INTERVAL
        return before[1] + (after[1] - before[1]) * (seq - before[0]) / (after[0] - before[0])

    def losses(self, until: float) -> tuple[int, list[float]]:
        """(sent, wall times of the lost) of the packets sent from ``mark`` until ``until`` (wall time)."""
        if self.from_seq is None:
            return 0, []
        last = self.max_seq
        while last >= self.from_seq and self.time_of(last) > until:
            last -= 50
        seqs = range(self.from_seq, last + 1)
        lost = [s for s in seqs if s >= len(self.received) or not self.received[s]]
        return len(seqs), [self.asked.get(s) or self.time_of(s) for s in lost]


_SERVER = r"""
import json, random, socket, sys, time
block = random.Random(int(sys.argv[1])).randbytes(65521)
ring = block + block
srv = socket.create_server(("0.0.0.0", 5202))
print(json.dumps({"ready": True}), flush=True)
conns = total = 0
while True:
    conn, _ = srv.accept()
    conns += 1
    off, last = 0, 0.0
    try:
        while chunk := conn.recv(65521):
            i = off % 65521
            if chunk != ring[i:i + len(chunk)]:
                bad = next(k for k in range(len(chunk)) if chunk[k] != ring[i + k])
                print(json.dumps({"corrupt": off + bad, "conn": conns}), flush=True)
                sys.exit(1)
            off += len(chunk)
            total += len(chunk)
            if time.monotonic() - last > 1:
                last = time.monotonic()
                print(json.dumps({"bytes": total, "conn": conns}), flush=True)
    except OSError as err:
        print(json.dumps({"error": str(err), "conn": conns}), flush=True)
    conn.close()
    print(json.dumps({"closed": conns, "bytes": total}), flush=True)
"""

_CLIENT = r"""
import random, socket, sys, time
block = random.Random(int(sys.argv[2])).randbytes(65521)
ring = block + block
rate = float(sys.argv[3])
while True:
    try:
        with socket.create_connection((sys.argv[1], 5202), timeout=5) as s:
            s.settimeout(None)
            off, start = 0, time.monotonic()
            while True:
                i = off % 65521
                s.sendall(ring[i:i + 16384])
                off += 16384
                ahead = off / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    except OSError as err:
        print(f"reconnecting: {err}", file=sys.stderr, flush=True)
        time.sleep(0.5)
"""


class TcpStream:
    """A content-checked TCP stream from ``src_ns``'s container to ``dst_ip`` (served in ``dst_ns``)."""

    def __init__(self, src_ns: str, dst_ns: str, dst_ip: str, seed: int, rate: float = 1_000_000) -> None:
        self.bytes = 0
        self.connections = 0
        self.corrupt: int | None = None
        self.errors: list[str] = []
        self.server = subprocess.Popen(in_ns(dst_ns, sys.executable, "-c", _SERVER, str(seed)),
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.server.stdout is not None
        first = self.server.stdout.readline()
        if "ready" not in first:
            raise RuntimeError(f"the TCP stream's receiver did not start: {first!r}")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.client = subprocess.Popen(in_ns(src_ns, sys.executable, "-c", _CLIENT, dst_ip, str(seed), str(rate)),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _read(self) -> None:
        assert self.server.stdout is not None
        for line in self.server.stdout:
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                self.bytes = msg.get("bytes", self.bytes)
                self.connections = max(self.connections, msg.get("conn", 0))
                if "corrupt" in msg:
                    self.corrupt = msg["corrupt"]
                if "error" in msg:
                    self.errors.append(msg["error"])

    def mark(self) -> None:
        """Count from the next packet on (the soak's start, after the warm-up)."""
        self.from_seq = self.max_seq + 1

    def stop(self) -> None:
        for proc in (self.client, self.server):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)


__all__ = ["INTERVAL", "Pinger", "TcpStream"]
