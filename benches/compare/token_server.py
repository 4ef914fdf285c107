#!/usr/bin/env python3
"""A tiny OAuth2 token endpoint for SCENARIO=oauth2 of benches/compare.sh.

Every POST (any path) answers
    {"access_token": "bench-token", "token_type": "Bearer", "expires_in": LIFETIME}
after an optional delay, so latchkey's client_credentials refreshes are real
HTTP round trips that take a realistic time. Each request is appended to the
log file as one JSON line {"start": epoch_s, "end": epoch_s, "path": ...}, which
compare.sh uses to tell refresh windows from the rest of the run.

Usage: token_server.py --lifetime 120 --delay-ms 100 --log FILE
Binds 127.0.0.1 on a free port (or --port) and prints "listening on PORT".
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--lifetime", type=int, default=120, help="expires_in, seconds")
    ap.add_argument("--delay-ms", type=float, default=100.0, help="added response time")
    ap.add_argument("--token", default="bench-token")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()

    lock = threading.Lock()
    log = open(args.log, "a", buffering=1)
    body = json.dumps(
        {"access_token": args.token, "token_type": "Bearer", "expires_in": args.lifetime}
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (http.server API)
            start = time.time()
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if args.delay_ms > 0:
                time.sleep(args.delay_ms / 1000.0)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            with lock:
                log.write(json.dumps({"start": start, "end": time.time(), "path": self.path}) + "\n")

        def do_GET(self):  # noqa: N802 -- readiness probe
            self.send_response(405)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt, *a):  # keep stderr quiet
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    print(f"listening on {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
