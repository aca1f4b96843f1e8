"""What a live carbon-intensity provider costs a task, against the static provider.

A local HTTP server answers like Electricity Maps' latest-value endpoint, with a set
latency (default 200 ms, a slow API) or not at all (a dead API). Figures, all from this
run, per ``intensity_at`` call:

- static provider (the baseline);
- electricitymaps, value cached;
- the call that finds the cached value expired: served stale while a background thread
  refreshes, against a cold (blocking) fetch from the same server;
- fallback chain [electricitymaps, static] with the API dead: the first call (one
  timeout), then every later call within the back-off.

    python benchmarks/bench_intensity.py [--calls 20000] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from carbonedge.carbon.intensity import create_provider

NOW = datetime.now(UTC)


class _Api(BaseHTTPRequestHandler):
    latency_s = 0.2
    dead = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        time.sleep(30 if self.dead else self.latency_s)
        body = json.dumps({"zone": "FR", "carbonIntensity": 55.0,
                           "datetime": "2026-11-27T16:00:00.000Z"}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _per_call_us(call: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t0) / n * 1e6


def _once_ms(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    args = parser.parse_args()
    _Api.latency_s = args.latency_ms / 1e3
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    live_spec = {"provider": "electricitymaps", "zone": "FR", "token": "bench",
                 "base_url": url, "timeout_s": 1.0}

    static = create_provider({"provider": "static", "value": 400})
    static_us = statistics.median(
        _per_call_us(lambda: static.intensity_at(NOW), args.calls) for _ in range(3))
    print(f"static provider:                  {static_us:8.2f} us/call (baseline)")

    live = create_provider({**live_spec, "cache_s": 300})
    cold_ms = _once_ms(lambda: live.intensity_at(NOW))
    cached_us = statistics.median(
        _per_call_us(lambda: live.intensity_at(NOW), args.calls) for _ in range(3))
    print(f"electricitymaps, cached:          {cached_us:8.2f} us/call "
          f"({cached_us / static_us:.1f}x static)")
    print(f"electricitymaps, cold fetch:      {cold_ms:8.1f} ms "
          f"(server latency {args.latency_ms:.0f} ms)")

    expiring = create_provider({**live_spec, "cache_s": 0.05})
    expiring.intensity_at(NOW)
    time.sleep(0.06)
    readings = []
    stale_ms = _once_ms(lambda: readings.append(expiring.intensity_at(NOW)))
    source = readings[0].source
    print(f"electricitymaps, expired value:   {stale_ms:8.3f} ms "
          f"(served as {source!r}; {cold_ms / stale_ms:.0f}x faster than a blocking fetch)")

    _Api.dead = True
    chain = create_provider({"provider": "fallback", "chain": [
        {**live_spec, "timeout_s": 0.5, "retry_s": 60},
        {"provider": "static", "value": 400},
    ]})
    first_ms = _once_ms(lambda: chain.intensity_at(NOW))
    dead_us = statistics.median(
        _per_call_us(lambda: chain.intensity_at(NOW), args.calls) for _ in range(3))
    print(f"fallback, API dead, first call:   {first_ms:8.1f} ms (timeout_s 0.5)")
    print(f"fallback, API dead, later calls:  {dead_us:8.2f} us/call "
          f"({dead_us / static_us:.1f}x static; source {chain.intensity_at(NOW).source!r})")
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
