"""A TCP proxy on loopback that injects network faults between a client and a server under test."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultProxy:
    """Forwards 127.0.0.1:port to a target; can drop connections or refuse them for a while.

    - `drop_next(n)`: the next n accepted connections are closed at once (the client sees a reset
      or a closed connection mid-request), and every open connection is cut now.
    - `outage(seconds)`: stop listening (connection refused), then listen again on the same port:
      a server that goes away and comes back.
    - `delay_next(n, seconds, prefix)`: the next n requests whose first bytes are `prefix` (e.g.
      b"PUT ") reach the server `seconds` late: a slow upload.
    - `outage_at(nth, seconds, prefix)`: when the nth such request arrives, it is cut off with
      every open connection and the port refuses connections for `seconds` (`outages` counts it).
    - `throttle_uploads(bytes_per_s)`: request bodies of PUTs trickle to the server at that rate
      (a slow link): uploads take long without any single read stalling into a client retry.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._drop = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.dropped = 0
        self.accepted = 0
        self.delayed = 0
        self.delayed_requests: list[str] = []
        self.outages = 0
        self.throttled_bytes = 0
        self._rate = 0.0
        self._delay: tuple[int, float, bytes] = (0, 0.0, b"")
        self._outage_at: tuple[int, float, bytes] = (0, 0.0, b"")
        self._stop = threading.Event()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        s.settimeout(0.2)
        return s

    def drop_next(self, n: int) -> None:
        with self._lock:
            self._drop += n
            conns, self._conns = self._conns, []
        _cut(conns)

    def delay_next(self, n: int, seconds: float, prefix: bytes) -> None:
        with self._lock:
            self._delay = (n, seconds, prefix)

    def throttle_uploads(self, bytes_per_s: float) -> None:
        self._rate = bytes_per_s

    def outage_at(self, nth: int, seconds: float, prefix: bytes) -> None:
        with self._lock:
            self._outage_at = (nth, seconds, prefix)

    def outage(self, seconds: float) -> None:
        """Refuses connections for `seconds` (runs in the background)."""

        def run() -> None:
            with self._lock:
                old = self._listener
                conns, self._conns = self._conns, []
                old.close()
                _cut(conns)
                time.sleep(seconds)
                self._listener = self._listen(self.port)

        threading.Thread(target=run, daemon=True).start()
        time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                time.sleep(0.01)
                continue
            with self._lock:
                self.accepted += 1
                if self._drop > 0:
                    self._drop -= 1
                    self.dropped += 1
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        in_put = False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and data.startswith(_METHODS):  # a new request on this connection
                    in_put = data.startswith(b"PUT ")
                if upstream and in_put and self._rate > 0:
                    for i in range(0, len(data), 4096):
                        dst.sendall(data[i : i + 4096])
                        time.sleep(len(data[i : i + 4096]) / self._rate)
                    self.throttled_bytes += len(data)
                    continue
                if upstream:
                    with self._lock:
                        n, seconds, prefix = self._delay
                        hit = n > 0 and data.startswith(prefix)
                        if hit:
                            self._delay = (n - 1, seconds, prefix)
                            self.delayed += 1
                            self.delayed_requests.append(data.split(b"\r\n", 1)[0].decode())
                        nth, down_s, down_prefix = self._outage_at
                        down = nth > 0 and data.startswith(down_prefix)
                        if down:
                            self._outage_at = (nth - 1, down_s, down_prefix)
                            down = nth == 1
                    if down:
                        self.outages += 1
                        self.outage(down_s)  # cuts this connection too: the request is lost
                        break
                    if hit:
                        time.sleep(seconds)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")


def _cut(conns: list[socket.socket]) -> None:
    # shutdown() wakes the forwarding threads blocked in recv() and sends the peer a FIN;
    # close() alone would leave the connection open while another thread uses it.
    for c in conns:
        with contextlib.suppress(OSError):
            c.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            c.close()
