#!/usr/bin/env bash
# Push fan-out benchmark: a control plane (the built CLI) and one load process holding STREAMS
# ADS streams; each of TRIALS trials moves one endpoint and times until every stream has ACKed.
# Both ADS variants (state of the world, delta), each beside the same measurement on a bare grpc-js
# server that only writes one pre-encoded message to every stream (bench/xds/floor-server.mjs).
#   bash bench/xds/run.sh [streams=1000] [trials=20]     (target: p99 <= 200 ms at 1000 streams)
# Prints a Markdown report and saves it as bench/.out/xds-<UTC>.md (+ .json, xds-latest.md).
# Knobs: BENCH_XDS_VARIANTS="sotw delta", BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
STREAMS="${1:-1000}"
TRIALS="${2:-20}"
VARIANTS="${BENCH_XDS_VARIANTS:-sotw delta}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  npx tsc -p tsconfig.json >/dev/null || true   # emits even when unrelated files fail to typecheck
fi
[ -f dist/xds/control-plane.js ] || { echo "build did not produce dist/xds/control-plane.js" >&2; exit 1; }

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
WORK=$(mktemp -d /tmp/ctxmesh-bench-xds.XXXXXX)
CP_PID=""; FLOOR_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in $CP_PID $FLOOR_PID; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then echo "   temp dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() { # wait_ready ADMIN_PORT NAME
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$2 did not become ready" >&2; return 1
}

busy_pct() { # busy % of the whole machine over 0.5 s
  local a b
  a=($(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)); sleep 0.5
  b=($(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat))
  echo $(( (b[0] - a[0]) * 100 / (b[1] - a[1] > 0 ? b[1] - a[1] : 1) ))
}
DIRTY=false; [[ -n "$(git status --porcelain -- src xds 2>/dev/null)" ]] && DIRTY=true
cat >"$WORK/meta.json" <<EOF
{"command":"bash bench/xds/run.sh $STREAMS $TRIALS","date":"$(date -u +%Y-%m-%dT%H:%MZ)","cpus":$(nproc),"cpu":"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "mem_gib":$(awk '/MemTotal/ {printf "%d", $2/1024/1024}' /proc/meminfo),"os":"$(. /etc/os-release; echo "$PRETTY_NAME")","kernel":"$(uname -r)",
 "node":"$(node --version)","git":"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)","dirty":$DIRTY,"busy_pct":$(busy_pct),
 "streams":$STREAMS,"trials":$TRIALS}
EOF

# --- ctxmesh control plane ---
XDS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
cat > "$WORK/control-plane.yaml" <<YAML
port: $XDS_PORT
address: 127.0.0.1
admin: { port: $ADMIN_PORT }
registration: { ttl: 5m }
log: { level: warn }
services:
  - name: bench
    tls: none
    endpoints: [{ address: 127.0.0.1:19000, zone: z1 }]
YAML
node dist/src/cli/main.js control-plane -c "$WORK/control-plane.yaml" &
CP_PID=$!
wait_ready "$ADMIN_PORT" "the control plane"
: >"$WORK/results.jsonl"
base=20000
for variant in $VARIANTS; do
  echo "== ctxmesh control plane, $variant: $STREAMS streams, $TRIALS trials" >&2
  node bench/xds/fanout.mjs "127.0.0.1:$XDS_PORT" "127.0.0.1:$ADMIN_PORT" "$STREAMS" "$TRIALS" "$variant" "$base" \
    | sed 's/^{/{"server":"ctxmesh",/' | tee -a "$WORK/results.jsonl" >&2
  base=$((base + TRIALS + 1))
done
kill "$CP_PID"; wait "$CP_PID" 2>/dev/null || true; CP_PID=""

# --- the floor: a bare grpc-js server writing one message to every stream ---
FLOOR_XDS=$(free_port)
FLOOR_ADMIN=$(free_port)
node bench/xds/floor-server.mjs "$FLOOR_XDS" "$FLOOR_ADMIN" &
FLOOR_PID=$!
wait_ready "$FLOOR_ADMIN" "the floor server"
for variant in $VARIANTS; do
  echo "== floor (bare grpc-js), $variant: $STREAMS streams, $TRIALS trials" >&2
  node bench/xds/fanout.mjs "127.0.0.1:$FLOOR_XDS" "127.0.0.1:$FLOOR_ADMIN" "$STREAMS" "$TRIALS" "$variant" "$base" \
    | sed 's/^{/{"server":"floor",/' | tee -a "$WORK/results.jsonl" >&2
  base=$((base + TRIALS + 1))
done
kill "$FLOOR_PID"; wait "$FLOOR_PID" 2>/dev/null || true; FLOOR_PID=""

mkdir -p bench/.out
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
node bench/xds/report.mjs "$WORK/meta.json" "$WORK/results.jsonl" "bench/.out/xds-$STAMP"
cp "bench/.out/xds-$STAMP.md" bench/.out/xds-latest.md
echo "   saved bench/.out/xds-$STAMP.md (+ .json)" >&2
