#!/usr/bin/env bash
# ctxmesh state agent benchmark: the context API beside a bare node:http server and Redis itself.
#
#   bash bench/state/run.sh
#
# In one run, at each concurrency (1 and 32 by default), keep-alive, 1 KiB values:
#   GET of an L1-resident context   vs  a bare node:http server answering the same bytes
#   GET served from L2 (Redis)      vs  redis-benchmark -t get, and vs node:http + ioredis (floor)
#   write-through PUT, WAL fsync none (and, for information, fsync always)  vs  redis-benchmark -t set,
#                                   and vs node:http + ioredis SET (floor)
# prints a Markdown report with the ratios against the issue's targets and saves it to
# bench/.out/state-<UTC>.md (+ .json). Everything started is stopped on exit (trap). See
# bench/README.md ("State agent benchmark") for what each row is. Knobs (environment):
#   BENCH_ROUNDS=3 BENCH_DURATION=5 BENCH_WARMUP=2   rounds (interleaved, fresh servers each round),
#                       seconds measured and seconds of warm-up per measurement
#   BENCH_STATE_CONNS="1 32"    concurrencies (wrk -t1 -cC; redis-benchmark -c C)
#   BENCH_STATE_ONLY="api-l1 node-bare"   run only these scenario keys (node-bare api-l1 redis-get
#                       floor-l2 api-l2 redis-set floor-put api-put api-put-fsync)
#   BENCH_LOADGEN_CPU=0 BENCH_REDIS_CPU=0 BENCH_SERVER_CPU=1   taskset pinning ("" = none)
#   BENCH_REDIS_PEER_CPU=1  where Redis runs while redis-benchmark measures it (default: the server core)
#   BENCH_STATE_PORT_BASE=19380   ports base..base+2 and base+10..base+13
#   BENCH_PROFILE=1     after the rounds, profile the sidecar (node --cpu-prof) under C=32 GET (L1,
#                       L2) and PUT load and add its top frames to the report; 0 = skip
#   BENCH_SKIP_BUILD=1  do not run `npm run build` (by default it runs when dist/ is older than src/)
#   BENCH_CTXMESH_CLI=path   the ctxmesh CLI to run (default dist/src/cli/main.js; no build then)
#   BENCH_CTXMESH_REV=text   what that CLI was built from, for the report (default: git HEAD here)
#   BENCH_QUIET_PCT=10 BENCH_QUIET_WAIT=30 BENCH_NOISE_PCT=10 BENCH_NOISY_RETRIES=2
#   BENCH_QUIET_BUDGET=60   wait for other work on the machine to settle, re-measure noisy runs
#                           (as bench/proxy/run.sh does)
#   BENCH_KEEP_TMP=1    keep the temp dir (configs, logs, raw results, profiles)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/bench/state"
cd "$ROOT"

ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-5}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS_LIST="${BENCH_STATE_CONNS:-1 32}"
ONLY="${BENCH_STATE_ONLY:-}"
PROFILE="${BENCH_PROFILE:-1}"
QUIET_PCT="${BENCH_QUIET_PCT:-10}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-30}"
NOISE_PCT="${BENCH_NOISE_PCT:-10}"
NOISY_RETRIES="${BENCH_NOISY_RETRIES:-2}"
QUIET_BUDGET="${BENCH_QUIET_BUDGET:-60}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
CLK_TCK="$(getconf CLK_TCK)"
VALUE_BYTES=1024
SCENARIOS=(node-bare api-l1 redis-get floor-l2 api-l2 redis-set floor-put api-put api-put-fsync)

if [[ "$(nproc)" -ge 2 ]]; then
  LOADGEN_CPU="${BENCH_LOADGEN_CPU-0}"; REDIS_CPU="${BENCH_REDIS_CPU-0}"; SERVER_CPU="${BENCH_SERVER_CPU-1}"
else
  LOADGEN_CPU="${BENCH_LOADGEN_CPU-}"; REDIS_CPU="${BENCH_REDIS_CPU-}"; SERVER_CPU="${BENCH_SERVER_CPU-}"
fi
# When Redis itself is the server under test (the redis-benchmark rows), it runs where the sidecar
# runs, across a core from its load generator, as the API is: on this VM a request that stays on
# one core skips a cross-core wake-up and Redis looks 3x faster at C=1 than any cross-core path.
REDIS_PEER_CPU="${BENCH_REDIS_PEER_CPU-$SERVER_CPU}"

BASE="${BENCH_STATE_PORT_BASE:-19380}"
P_REDIS=$BASE             # redis-server, no persistence
P_BARE=$((BASE + 1))      # bare node:http server (the L1 peer)
P_FLOOR=$((BASE + 2))     # node:http + ioredis (the L2 floor)
P_IN=$((BASE + 10)); P_OUT=$((BASE + 11)); P_ADMIN=$((BASE + 12)); P_CTX=$((BASE + 13)) # sidecar

CLI="${BENCH_CTXMESH_CLI:-$ROOT/dist/src/cli/main.js}"
GET_KEY=bench/k1          # the context every GET scenario reads
PUT_KEY=bench/put         # the one context every PUT writes (redis-benchmark -t set: one key too)
RB_KEY='key:__rand_int__' # the key redis-benchmark reads and writes without -r

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
info() { printf '   %s\n' "$*" >&2; }
die() { printf '\nbench/state: ERROR: %s\n' "$*" >&2; exit 1; }
want() { [[ -z "$ONLY" ]] || [[ " $ONLY " == *" $1 "* ]]; }

ensure_tools() {
  local missing=() pkgs=() t
  for t in redis-server redis-benchmark redis-cli wrk; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  if ((${#missing[@]})); then
    for t in "${missing[@]}"; do
      case "$t" in redis-server) pkgs+=(redis-server) ;; redis-*) pkgs+=(redis-tools) ;; *) pkgs+=("$t") ;; esac
    done
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      say "installing ${pkgs[*]} (apt-get, running as root)"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"; } >&2 \
        || die "apt-get install ${pkgs[*]} failed"
    else
      die "missing ${missing[*]}: install them (Debian: apt-get install -y ${pkgs[*]})"
    fi
  fi
  for t in node curl taskset ps; do command -v "$t" >/dev/null 2>&1 || die "missing $t"; done
}

# ---------------------------------------------------------------------------------------------
# Processes: everything started goes into PIDS and is stopped on exit, and nothing else is.
# ---------------------------------------------------------------------------------------------
PIDS=()
TMP=""

tree_pids() { # the pid and all its descendants
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2; pids[NR] = $1 }
    END { keep[root] = 1; changed = 1
      while (changed) { changed = 0
        for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } }
      for (p in keep) print p }'
}

stop_pid() { # SIGTERM, then SIGKILL after 5 s
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then info "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'info "interrupted: stopping everything this run started"; exit 130' INT TERM

LAST_PID=""
exec_bg() { "$@" & LAST_PID=$!; }
start_bg() { # start_bg NAME CPU cmd...: stdout+stderr to $TMP/logs/NAME.log; exec'd, so $! is the program
  local name="$1" cpu="$2"; shift 2
  if [[ -n "$cpu" ]]; then exec_bg taskset -c "$cpu" "$@" >>"$TMP/logs/$name.log" 2>&1
  else exec_bg "$@" >>"$TMP/logs/$name.log" 2>&1; fi
  PIDS+=("$LAST_PID")
}
run_fg() { # run_fg CPU cmd...: in the background and waited for, so Ctrl-C is handled at once
  local cpu="$1" rc=0; shift
  if [[ -n "$cpu" ]]; then exec_bg taskset -c "$cpu" "$@"; else exec_bg "$@"; fi
  PIDS+=("$LAST_PID")
  wait "$LAST_PID" || rc=$?
  unset 'PIDS[${#PIDS[@]}-1]'
  return $rc
}
stop_started() { # stop_started PID: stop and forget
  local q keep=()
  stop_pid "$1"
  for q in "${PIDS[@]}"; do [[ "$q" == "$1" ]] || keep+=("$q"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
wait_ready() { # wait_ready URL PID: until URL answers 200 (30 s), while PID lives
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# Quiet machine, CPU accounting (the proxy benchmark's approach)
# ---------------------------------------------------------------------------------------------
ticks_of() { # utime+stime (clock ticks) of a pid and its descendants
  local t=0 p v
  for p in $(tree_pids "$1"); do
    v="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')" || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
all_busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
machine_busy_pct() { # busy % of the whole machine over 0.5 s
  local a b
  a="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)"
  sleep 0.5
  b="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)"
  echo "$a $b" | awk '{ d = $4 - $2; print (d > 0) ? int(100 * ($3 - $1) / d) : 0 }'
}
QUIET_SPENT=0
wait_quiet() { # other work (builds, test suites) skews every figure: wait for it to stop
  local i busy=0 t0=$SECONDS
  ((QUIET_SPENT < QUIET_BUDGET)) || return 0
  for ((i = 0; i < 2 * QUIET_WAIT; i++)); do
    busy="$(machine_busy_pct)"
    ((busy <= QUIET_PCT)) && break
    ((i % 20 == 0)) && info "machine busy (${busy}% of all cores, not ours); waiting up to ${QUIET_WAIT}s"
  done
  ((busy <= QUIET_PCT)) || info "WARNING: still busy (${busy}%); measuring anyway (see 'unattributed CPU')"
  ((i == 0)) || QUIET_SPENT=$((QUIET_SPENT + SECONDS - t0))
}
snap_children() { times >"$TMP/times.txt"; } # this shell's reaped children (the load generator)
children_ms() {
  awk 'NR == 2 { t = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60000 + a[2] * 1000 }
    printf "%d\n", t }' "$TMP/times.txt"
}

# window_begin SERVER_PID  ...  window_end -> WIN_JSON fragment, WIN_NOISE (% of a core busy but
# charged to none of the server, Redis and the load generator: other work on the machine)
W_SRV=0; W_SRV0=0; W_RED0=0; W_GEN0=0; W_ALL0=0; W_T0=0; WIN_JSON=""; WIN_NOISE=0
window_begin() {
  W_SRV="$1"; W_SRV0="$(ticks_of "$W_SRV")"; W_RED0="$(ticks_of "$REDIS_PID")"
  snap_children; W_GEN0="$(children_ms)"; W_ALL0="$(all_busy_ticks)"; W_T0="$(date +%s%N)"
}
window_end() {
  local t1 all1 gen1 srv red ours
  t1="$(date +%s%N)"; all1="$(all_busy_ticks)"; snap_children; gen1="$(children_ms)"
  srv=$(($(ticks_of "$W_SRV") - W_SRV0)); red=$(($(ticks_of "$REDIS_PID") - W_RED0))
  ((W_SRV == REDIS_PID)) && red=0
  ours=$((srv + red + (gen1 - W_GEN0) * CLK_TCK / 1000))
  WIN_NOISE=$(( (all1 - W_ALL0 - ours) * 100 * 1000000000 / CLK_TCK / (t1 - W_T0) ))
  ((WIN_NOISE >= 0)) || WIN_NOISE=0
  WIN_JSON="\"wall_ns\":$((t1 - W_T0)),\"server_ticks\":$srv,\"redis_ticks\":$red,\"gen_cpu_ms\":$((gen1 - W_GEN0)),\"noise_pct\":$WIN_NOISE"
}
retry_noisy() { # retry_noisy ATTEMPT: 0 if the run should be measured again
  ((WIN_NOISE > NOISE_PCT)) || return 1
  if (($1 <= NOISY_RETRIES && QUIET_SPENT < QUIET_BUDGET)); then
    info "other work used ${WIN_NOISE}% of a core during the run (limit ${NOISE_PCT}%); measuring again"
    QUIET_SPENT=$((QUIET_SPENT + WARMUP + DURATION)); return 0
  fi
  info "other work used ${WIN_NOISE}% of a core during the run; keeping it, flagged"
  return 1
}

record() { # record KEY CONNS STATUS JSON-FRAGMENT
  printf '{"key":"%s","conns":%d,"round":%d,"status":"%s",%s}\n' "$1" "$2" "$ROUND" "$3" "$4" >>"$TMP/results.jsonl"
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
# measure_wrk KEY CONNS URL SERVER_PID [PUT]: warm-up, then the measured run, wrk on the load core
measure_wrk() {
  local key="$1" c="$2" url="$3" srv="$4" method="${5:-GET}" attempt log="$TMP/logs/wrk-$1-c$2.log"
  for ((attempt = 1; attempt <= 1 + NOISY_RETRIES; attempt++)); do
    wait_quiet
    STATE_METHOD="$method" STATE_BODY="$TMP/value.bin" run_fg "$LOADGEN_CPU" \
      wrk -t1 -c"$c" -d"${WARMUP}s" --timeout 5s -s "$HERE/wrk-state.lua" "$url" >"$log.warmup" 2>&1 \
      || { record "$key" "$c" failed '"note":"wrk warm-up failed"'; return 1; }
    window_begin "$srv"
    STATE_METHOD="$method" STATE_BODY="$TMP/value.bin" run_fg "$LOADGEN_CPU" \
      wrk -t1 -c"$c" -d"${DURATION}s" --timeout 5s --latency -s "$HERE/wrk-state.lua" "$url" >"$log" 2>&1 \
      || { record "$key" "$c" failed '"note":"wrk failed"'; return 1; }
    window_end
    kill -0 "$srv" 2>/dev/null || { record "$key" "$c" failed '"note":"the server exited during the run"'; return 1; }
    info "$(printf '%-14s c=%-3s %s; %s' "$key" "$c" "$(grep -o 'Requests/sec: *[0-9.]*' "$log")" "$(grep -E '^ +(50|99)%' "$log" | tr -s ' ' | tr '\n' ' ')")"
    retry_noisy "$attempt" || break
  done
  record "$key" "$c" ok "\"tool\":\"wrk\",\"attempts\":$attempt,\"wrk\":$(sed -n 's/^WRKJSON //p' "$log"),$WIN_JSON"
}

# measure_rb KEY CONNS TEST: redis-benchmark -t TEST; the warm-up also sizes -n to last DURATION s
measure_rb() {
  local key="$1" c="$2" t="$3" attempt n rps csv log="$TMP/logs/rb-$1-c$2.log"
  local args=(-h 127.0.0.1 -p "$P_REDIS" -t "$t" -d "$VALUE_BYTES" -c "$c" --csv)
  for ((attempt = 1; attempt <= 1 + NOISY_RETRIES; attempt++)); do
    wait_quiet
    run_fg "$LOADGEN_CPU" redis-benchmark "${args[@]}" -n $((c == 1 ? 20000 : 100000)) >"$log.warmup" 2>&1 \
      || { record "$key" "$c" failed '"note":"redis-benchmark warm-up failed"'; return 1; }
    rps="$(awk -F, 'NR == 2 {gsub(/"/, "", $2); print int($2)}' "$log.warmup")"
    n=$(( ${rps:-10000} * DURATION )); ((n >= 10000)) || n=10000
    window_begin "$REDIS_PID"
    run_fg "$LOADGEN_CPU" redis-benchmark "${args[@]}" -n "$n" >"$log" 2>&1 \
      || { record "$key" "$c" failed '"note":"redis-benchmark failed"'; return 1; }
    window_end
    csv="$(awk -F, 'NR == 2 { for (i = 1; i <= NF; i++) gsub(/"/, "", $i); printf "{\"requests\":%d,\"rps\":%s,\"avg_ms\":%s,\"p50_ms\":%s,\"p95_ms\":%s,\"p99_ms\":%s,\"max_ms\":%s}", '"$n"', $2, $3, $5, $6, $7, $8 }' "$log")"
    [[ -n "$csv" ]] || { record "$key" "$c" failed '"note":"no CSV line from redis-benchmark"'; return 1; }
    info "$(printf '%-14s c=%-3s %s' "$key" "$c" "$(sed -n 2p "$log")")"
    retry_noisy "$attempt" || break
  done
  record "$key" "$c" ok "\"tool\":\"redis-benchmark\",\"attempts\":$attempt,\"rb\":$csv,$WIN_JSON"
}

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
REDIS_PID=0
start_redis() {
  start_bg redis "$REDIS_CPU" redis-server --bind 127.0.0.1 --port "$P_REDIS" --save '' --appendonly no \
    --protected-mode no --daemonize no --dir "$TMP"
  REDIS_PID=$LAST_PID
  local i
  for ((i = 0; i < 100; i++)); do
    [[ "$(redis-cli -p "$P_REDIS" ping 2>/dev/null)" == PONG ]] && return 0
    sleep 0.1
  done
  die "redis-server did not start (see $TMP/logs/redis.log)"
}

pin_redis() { # pin_redis CPU: move every thread of the running redis-server to that core
  [[ -z "$1" ]] || taskset -a -pc "$1" "$REDIS_PID" >/dev/null
}

# write_sidecar_conf NAME L1_MAX_BYTES FSYNC
write_sidecar_conf() {
  cat >"$TMP/sidecar-$1.yaml" <<EOF
node: { id: bench }
identity: { cert: $TMP/certs/bench/cert.pem, key: $TMP/certs/bench/key.pem, ca: $TMP/certs/bench/ca.pem }
inbound: { port: $P_IN, address: 127.0.0.1, app: "http://127.0.0.1:9" }
outbound: { port: $P_OUT }
admin: { port: $P_ADMIN }
log: { level: warn, accessLog: false }
drainTimeout: 1s
context:
  port: $P_CTX
  l1: { maxBytes: $2 }
  l2: { backend: redis, url: "redis://127.0.0.1:$P_REDIS" }
  writeMode: write-through
  wal: { fsync: $3 }
  warm: { maxBytes: 0 }
  checkpoint: { dir: "$TMP/data" }
EOF
}

SRV_PID=0
start_sidecar() { # start_sidecar NAME [node flags...]: a fresh sidecar with an empty data dir
  local name="$1"; shift
  rm -rf "$TMP/data"
  start_bg "sidecar-$name" "$SERVER_CPU" node $CLI_NODE_FLAGS "$@" "$CLI" sidecar -c "$TMP/sidecar-$name.yaml"
  SRV_PID=$LAST_PID
  wait_ready "http://127.0.0.1:$P_ADMIN/ready" "$SRV_PID" && return 0
  info "sidecar $name did not become ready; its log:"; tail -20 "$TMP/logs/sidecar-$name.log" | sed 's/^/   /' >&2
  return 1
}

wait_ready_port() { # wait_ready_port PORT PID: until something listens on PORT (30 s), while PID lives
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
put_value() { # put_value URL: PUT the 1 KiB value -> 0 if 204
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X PUT -H 'content-type: application/octet-stream' \
    --data-binary @"$TMP/value.bin" "$1")" == 204 ]]
}
check_get() { # check_get URL TIER: 200, the very bytes PUT, and (when given) ctxmesh-tier: TIER
  local code tier
  code="$(curl -s -D "$TMP/check.head" -o "$TMP/check.body" -w '%{http_code}' --max-time 5 "$1" || true)"
  tier="$(awk -F': ' 'tolower($1) == "ctxmesh-tier" {gsub(/\r/, "", $2); print $2}' "$TMP/check.head")"
  if [[ "$code" != 200 ]] || ! cmp -s "$TMP/check.body" "$TMP/value.bin"; then
    info "pre-flight of $1 failed: status $code, body $(stat -c %s "$TMP/check.body") bytes (want 200 and the value)"; return 1
  fi
  if [[ -n "$2" && "$tier" != "$2" ]]; then info "pre-flight of $1: served from tier '$tier', not '$2'"; return 1; fi
}

# ---------------------------------------------------------------------------------------------
# Scenarios: each starts its server fresh, checks it serves what it claims, measures every C
# ---------------------------------------------------------------------------------------------
for_each_c() { # for_each_c FN KEY ARGS...: FN KEY C ARGS... for every concurrency
  local fn="$1" key="$2" c; shift 2
  for c in $CONNS_LIST; do "$fn" "$key" "$c" "$@" || true; done
}
skip_all() { local c; for c in $CONNS_LIST; do record "$1" "$c" failed "\"note\":\"$2\""; done; }

scenario() {
  local key="$1" url="http://127.0.0.1:$P_CTX/v1/contexts"
  case "$key" in
    node-bare)
      start_bg bare "$SERVER_CPU" node "$HERE/bare-server.mjs" --port "$P_BARE" --body "$TMP/value.bin"
      SRV_PID=$LAST_PID
      if wait_ready "http://127.0.0.1:$P_BARE/" "$SRV_PID" && check_get "http://127.0.0.1:$P_BARE/" ""; then
        for_each_c measure_wrk "$key" "http://127.0.0.1:$P_BARE/" "$SRV_PID"
      else skip_all "$key" "pre-flight failed"; fi
      stop_started "$SRV_PID" ;;
    floor-l2)
      redis-cli -p "$P_REDIS" -x set floor <"$TMP/value.bin" >/dev/null
      start_bg floor "$SERVER_CPU" node "$HERE/bare-server.mjs" --port "$P_FLOOR" --redis "redis://127.0.0.1:$P_REDIS" --key floor
      SRV_PID=$LAST_PID
      if wait_ready "http://127.0.0.1:$P_FLOOR/" "$SRV_PID" && check_get "http://127.0.0.1:$P_FLOOR/" l2; then
        for_each_c measure_wrk "$key" "http://127.0.0.1:$P_FLOOR/" "$SRV_PID"
      else skip_all "$key" "pre-flight failed"; fi
      stop_started "$SRV_PID" ;;
    floor-put)
      start_bg floor "$SERVER_CPU" node "$HERE/bare-server.mjs" --port "$P_FLOOR" --redis "redis://127.0.0.1:$P_REDIS" --key floor-put
      SRV_PID=$LAST_PID
      if wait_ready_port "$P_FLOOR" "$SRV_PID" && put_value "http://127.0.0.1:$P_FLOOR/" && check_get "http://127.0.0.1:$P_FLOOR/" l2; then
        for_each_c measure_wrk "$key" "http://127.0.0.1:$P_FLOOR/" "$SRV_PID" PUT
      else skip_all "$key" "pre-flight failed"; fi
      stop_started "$SRV_PID" ;;
    api-l1 | api-l2)
      if [[ "$key" == api-l1 ]]; then write_sidecar_conf "$key" 256MiB none; else write_sidecar_conf "$key" 1KiB none; fi
      if start_sidecar "$key" && put_value "$url/$GET_KEY" && check_get "$url/$GET_KEY" "${key#api-}"; then
        for_each_c measure_wrk "$key" "$url/$GET_KEY" "$SRV_PID"
      else skip_all "$key" "sidecar start or pre-flight failed"; fi
      stop_started "$SRV_PID" ;;
    api-put | api-put-fsync)
      if [[ "$key" == api-put ]]; then write_sidecar_conf "$key" 256MiB none; else write_sidecar_conf "$key" 256MiB always; fi
      if start_sidecar "$key" && put_value "$url/$PUT_KEY" && check_get "$url/$PUT_KEY" l1; then
        for_each_c measure_wrk "$key" "$url/$PUT_KEY" "$SRV_PID" PUT
      else skip_all "$key" "sidecar start or pre-flight failed"; fi
      stop_started "$SRV_PID" ;;
    redis-get)
      pin_redis "$REDIS_PEER_CPU"
      redis-cli -p "$P_REDIS" -x set "$RB_KEY" <"$TMP/value.bin" >/dev/null
      if [[ "$(redis-cli -p "$P_REDIS" strlen "$RB_KEY")" == "$VALUE_BYTES" ]]; then
        for_each_c measure_rb "$key" get
      else skip_all "$key" "the key redis-benchmark reads does not hold $VALUE_BYTES bytes"; fi
      pin_redis "$REDIS_CPU" ;;
    redis-set)
      pin_redis "$REDIS_PEER_CPU"
      for_each_c measure_rb "$key" set
      pin_redis "$REDIS_CPU" ;;
  esac
}

# profile KEY: the sidecar under `node --cpu-prof` at the largest C, DURATION s, then its top frames
profile() {
  local key="$1" c url="http://127.0.0.1:$P_CTX/v1/contexts" method=GET target prof t_start t_load
  c="$(echo "$CONNS_LIST" | tr ' ' '\n' | sort -n | tail -1)"
  case "$key" in
    api-l1) write_sidecar_conf "$key" 256MiB none; target="$url/$GET_KEY" ;;
    api-l2) write_sidecar_conf "$key" 1KiB none; target="$url/$GET_KEY" ;;
    api-put) write_sidecar_conf "$key" 256MiB none; target="$url/$PUT_KEY"; method=PUT ;;
  esac
  prof="$TMP/prof-$key"; mkdir -p "$prof"
  t_start="$(date +%s%N)"
  start_sidecar "$key" --cpu-prof --cpu-prof-dir="$prof" && put_value "$target" || { stop_started "$SRV_PID"; return 1; }
  [[ "$method" == PUT ]] || check_get "$target" "${key#api-}" || { stop_started "$SRV_PID"; return 1; }
  wait_quiet
  t_load="$(date +%s%N)"
  STATE_METHOD="$method" STATE_BODY="$TMP/value.bin" run_fg "$LOADGEN_CPU" \
    wrk -t1 -c"$c" -d"$((WARMUP + DURATION))s" --timeout 5s -s "$HERE/wrk-state.lua" "$target" >"$TMP/logs/wrk-prof-$key.log" 2>&1 || true
  stop_started "$SRV_PID" # SIGTERM: the sidecar drains and exits, and node writes the profile
  info "$key: $(grep -o 'Requests/sec: *[0-9.]*' "$TMP/logs/wrk-prof-$key.log") under the profiler"
  # Only the measured part: from the end of the warm-up, DURATION s (not start-up, not shutdown).
  node "$HERE/profile-top.mjs" --label "$key, $method, c=$c" --skip-ms $(( (t_load - t_start) / 1000000 + WARMUP * 1000 )) \
    --span-ms $((DURATION * 1000)) "$prof"/*.cpuprofile >>"$TMP/profiles.md" \
    || info "no profile written for $key"
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
ensure_tools
TMP="$(mktemp -d /tmp/ctxmesh-state-bench.XXXXXX)"
mkdir -p "$TMP/logs"; : >"$TMP/results.jsonl"; : >"$TMP/profiles.md"
for p in "$P_REDIS" "$P_BARE" "$P_FLOOR" "$P_IN" "$P_OUT" "$P_ADMIN" "$P_CTX"; do
  (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is in use (BENCH_STATE_PORT_BASE moves them)"
done
# 1 KiB of printable bytes, the same value for every peer (redis-cli -x keeps it as is).
head -c 768 /dev/urandom | base64 -w0 | head -c "$VALUE_BYTES" >"$TMP/value.bin"

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && -z "${BENCH_CTXMESH_CLI:-}" ]] &&
  { [[ ! -f "$CLI" ]] || [[ -n "$(find src -name '*.ts' -newer "$CLI" | head -1)" ]]; }; then
  say "building ctxmesh (npm run build)"
  npm run build --silent >"$TMP/logs/build.log" 2>&1 || { tail -20 "$TMP/logs/build.log" >&2; die "npm run build failed"; }
fi
[[ -f "$CLI" ]] || die "${CLI#"$ROOT/"} missing (npm ci && npm run build)"
# The sidecar runs with the node flags of the CLI's shebang, as deployed (bench/cli-node-flags.mjs).
CLI_NODE_FLAGS="$(node "$ROOT/bench/cli-node-flags.mjs" "$CLI")"
say "certificates (ctxmesh certs init / issue)"
node "$CLI" certs init --out "$TMP/certs" >"$TMP/logs/certs.log" 2>&1 || die "ctxmesh certs init failed"
node "$CLI" certs issue --ca "$TMP/certs" --name bench --out "$TMP/certs/bench" >>"$TMP/logs/certs.log" 2>&1 \
  || die "ctxmesh certs issue failed"

say "redis-server on 127.0.0.1:$P_REDIS (no persistence), pinned to cpu${REDIS_CPU:-any}"
start_redis

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  say "round $ROUND of $ROUNDS (C = $CONNS_LIST; ${WARMUP}s warm-up + ${DURATION}s measured each)"
  for s in "${SCENARIOS[@]}"; do want "$s" && scenario "$s"; done
done

if [[ "$PROFILE" == 1 ]]; then
  say "profiles: the sidecar under node --cpu-prof"
  for s in api-l1 api-l2 api-put; do want "$s" && { profile "$s" || info "profile of $s failed"; }; done
fi

say "report"
cat >"$TMP/meta.json" <<EOF
{"rounds":$ROUNDS,"duration":$DURATION,"warmup":$WARMUP,"conns":"$CONNS_LIST","value_bytes":$VALUE_BYTES,
 "loadgen_cpu":"$LOADGEN_CPU","redis_cpu":"$REDIS_CPU","redis_peer_cpu":"$REDIS_PEER_CPU","server_cpu":"$SERVER_CPU","clk_tck":$CLK_TCK,
 "cli":"${CLI#"$ROOT/"}","git":"${BENCH_CTXMESH_REV:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')}",
 "dirty":$([[ -z "${BENCH_CTXMESH_REV:-}" && -n "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null)" ]] && echo true || echo false),
 "node":"$(node -v)","redis":"$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')",
 "wrk":"$(wrk -v 2>&1 | head -1 | awk '{print $2}')","cpu":"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)",
 "ncpu":$(nproc),"kernel":"$(uname -r)"}
EOF
mkdir -p "$ROOT/bench/.out"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
node "$HERE/report.mjs" "$TMP" "$ROOT/bench/.out/state-$STAMP"
cp "$ROOT/bench/.out/state-$STAMP.md" "$ROOT/bench/.out/state-latest.md"
info "report saved: bench/.out/state-$STAMP.md (and .json)"
