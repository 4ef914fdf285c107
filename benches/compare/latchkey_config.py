#!/usr/bin/env python3
"""Writes the latchkey config for one contender of benches/compare.sh.

Prints the request path wrk should use (the benchmarked route) on stdout.

  --routes 1        one route, prefix /bench/ (the default `static` config)
  --routes N        N routes, a host / prefix / host+prefix mix with prefixes
                    of many lengths; the benchmarked route is a prefix route
                    in the middle of the list
  --no-audit        audit: {enabled: false} and metrics: {enabled: false}
  --oauth2-url URL  the credential is OAuth2 client_credentials against URL
                    instead of a static env secret
  --key-file PATH   the static key is read from PATH (a watched file, so it
                    can be rotated and the route keeps its 401 retry)
                    instead of the BENCH_API_KEY environment variable (a
                    key that never changes: the route has no 401 retry)
"""

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--routes", type=int, default=1)
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument("--oauth2-url")
    ap.add_argument("--key-file")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    out = []
    w = out.append
    w(f"proxy:\n  listen: {args.listen}\n")
    w(f"admin:\n  listen: {args.admin}\n")
    w("clients:\n  - id: bench\n    token: { env: BENCH_PROXY_TOKEN }\n    routes: [\"*\"]\n")
    w("credentials:\n  - id: bench-key\n")
    if args.oauth2_url:
        w("    oauth2:\n")
        w("      grant: client_credentials\n")
        w(f"      token_url: {args.oauth2_url}\n")
        w("      client_id: bench\n")
        w("      client_secret: { env: BENCH_CLIENT_SECRET }\n")
        w("    refresh: { buffer: 60s, timeout: 10s }\n")
    elif args.key_file:
        w(f"    static: {{ file: {args.key_file} }}\n")
    else:
        w("    static: { env: BENCH_API_KEY }\n")
    if args.no_audit:
        w("audit:\n  enabled: false\nmetrics:\n  enabled: false\n")

    inject = 'inject: { header: Authorization, format: "Bearer {token}" }'
    w("routes:\n")
    if args.routes <= 1:
        path = "/bench/x"
        w("  - id: bench\n    match: { path_prefix: /bench/ }\n")
        w(f"    upstream: {args.upstream}\n    credential: bench-key\n    {inject}\n")
    else:
        n = args.routes
        target = (n // 2) - (n // 2) % 4  # a kind-0 (prefix-only) route in the middle
        path = None
        for i in range(n):
            kind = i % 4
            if kind == 0:
                match = f"{{ path_prefix: /svc-{i}/ }}"
                if i == target:
                    path = f"/svc-{i}/x"
            elif kind == 1:
                match = f"{{ host: svc-{i}.bench.internal }}"
            elif kind == 2:
                match = f"{{ host: api-{i % 50}.bench.internal, path_prefix: /v{i}/ }}"
            else:
                match = f"{{ path_prefix: /team-{i % 97}/project-{i}/items/ }}"
            w(f"  - id: r{i}\n    match: {match}\n")
            w(f"    upstream: {args.upstream}\n    credential: bench-key\n    {inject}\n")
        assert path is not None

    with open(args.output, "w") as f:
        f.write("".join(out))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
