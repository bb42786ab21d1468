#!/usr/bin/env bash
# ctxmesh proxy benchmark: ctxmesh beside nginx, haproxy and a naive Node proxy, on this machine.
#
#   bash bench/proxy/run.sh          (or: npm run bench)
#
# One run starts everything it needs on 127.0.0.1 (a temp dir under /tmp), measures, prints a
# report, and stops everything it started (trap on EXIT). See bench/README.md for what it prints
# and bench/RESULTS.md for figures from a real run. Knobs (environment):
#   BENCH_ROUNDS=3 BENCH_DURATION=5   every wrk scenario runs BENCH_ROUNDS times, interleaved with
#                       the others, BENCH_DURATION s measured each time after BENCH_WARMUP=2 s of
#                       warm-up, fresh proxy processes each round; the report gives the medians
#   BENCH_CONNECTIONS=32  wrk connections (1 wrk thread)
#   BENCH_RATE=1000 BENCH_RATE_DURATION=20   the fixed-rate (open-loop) test
#   BENCH_LOADGEN_CPU=0 BENCH_UPSTREAM_CPU=0 BENCH_PROXY_CPU=1   taskset pinning ("" = no pinning)
#   BENCH_PORT_BASE=18080   ports used: base..base+3 and base+7000..base+9020 (see below)
#   BENCH_ONLY="direct nginx"   run only these scenario keys (direct ctxmesh ctxmesh-log
#                               ctxmesh-mtls nginx haproxy naive floor node-origin fixed-rate)
#   BENCH_SKIP_BUILD=1      do not run `npm run build` (by default it runs when dist/ is missing or
#                           older than a file in src/)
#   BENCH_CTXMESH_CLI=path  the ctxmesh CLI to run (default dist/src/cli/main.js; no build then)
#   BENCH_STRICT=1          exit 1 if the ctxmesh rows could not be measured
#   BENCH_QUIET_PCT=10 BENCH_QUIET_WAIT=30   before each scenario wait (up to 30 s) until other work
#                           on the machine uses at most 10 % of it
#   BENCH_NOISE_PCT=10 BENCH_NOISY_RETRIES=2   a scenario during which other work took more than
#                           10 % of a core is measured again (at most twice) and flagged if still noisy
#   BENCH_QUIET_BUDGET=60   at most this many seconds in all go to waiting and re-measuring
#   BENCH_KEEP_TMP=1        keep the temp dir (configs, logs, raw results) after the run
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/bench/proxy"
cd "$ROOT"

ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-5}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNECTIONS:-32}"
RATE="${BENCH_RATE:-1000}"
RATE_DURATION="${BENCH_RATE_DURATION:-20}"
ONLY="${BENCH_ONLY:-}"
QUIET_PCT="${BENCH_QUIET_PCT:-10}"   # before each scenario, wait until the machine is at most this busy
QUIET_WAIT="${BENCH_QUIET_WAIT:-30}" # ... for at most this many seconds
NOISE_PCT="${BENCH_NOISE_PCT:-10}"   # a run during which other work took more than this % of a core
NOISY_RETRIES="${BENCH_NOISY_RETRIES:-2}" # ... is measured again, at most this many times
QUIET_BUDGET="${BENCH_QUIET_BUDGET:-60}" # total seconds a run may spend waiting/re-measuring
CLK_TCK="$(getconf CLK_TCK)"
BASE="${BENCH_PORT_BASE:-18080}"
BODY_BYTES=1024
HOST_HEADER=origin

NCPU="$(nproc)"
if [[ "$NCPU" -ge 2 ]]; then
  LOADGEN_CPU="${BENCH_LOADGEN_CPU-0}"
  UPSTREAM_CPU="${BENCH_UPSTREAM_CPU-0}"
  PROXY_CPU="${BENCH_PROXY_CPU-1}"
else
  LOADGEN_CPU="${BENCH_LOADGEN_CPU-}"
  UPSTREAM_CPU="${BENCH_UPSTREAM_CPU-}"
  PROXY_CPU="${BENCH_PROXY_CPU-}"
fi

# Ports (all on 127.0.0.1).
P_UPSTREAM=$BASE            # origin: nginx, 1 worker, `return 200 <1 KiB>`
P_NGINX=$((BASE + 1))       # nginx reverse proxy
P_HAPROXY=$((BASE + 2))     # haproxy
P_NAIVE=$((BASE + 3))       # naive Node proxy
P_FLOOR=$((BASE + 4))       # floor: node:http server + undici Pool, no features
P_NODE_ORIGIN=$((BASE + 5)) # floor: a bare node:http server answering 1 KiB (the server half alone)
# ctxmesh sidecars: P = plain hop, A/B = the mTLS pair. outbound/inbound/admin/context.
SC_P=($((BASE + 7001)) $((BASE + 7006)) $((BASE + 7000)) $((BASE + 7020)))
SC_A=($((BASE + 8001)) $((BASE + 8006)) $((BASE + 8000)) $((BASE + 8020)))
SC_B=($((BASE + 9001)) $((BASE + 9006)) $((BASE + 9000)) $((BASE + 9020)))

CLI="${BENCH_CTXMESH_CLI:-$ROOT/dist/src/cli/main.js}"

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
info() { printf '   %s\n' "$*" >&2; }
die() { printf '\nbench/proxy: ERROR: %s\n' "$*" >&2; exit 1; }
want() { [[ -z "$ONLY" ]] || [[ " $ONLY " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
ensure_tools() {
  local missing=() pkgs=() t
  for t in nginx haproxy wrk; do
    command -v "$t" >/dev/null 2>&1 || [[ -x "/usr/sbin/$t" ]] || missing+=("$t")
  done
  if ((${#missing[@]})); then
    for t in "${missing[@]}"; do
      case "$t" in nginx) pkgs+=(nginx-light) ;; *) pkgs+=("$t") ;; esac
    done
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      say "installing ${pkgs[*]} (apt-get, running as root)"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"; } >&2 \
        || die "apt-get install ${pkgs[*]} failed"
    else
      die "missing ${missing[*]}: install them (Debian: apt-get install -y ${pkgs[*]})"
    fi
  fi
  export PATH="$PATH:/usr/sbin:/sbin"
  for t in node curl taskset ps; do
    command -v "$t" >/dev/null 2>&1 || die "missing $t (needed by the benchmark)"
  done
}

# ---------------------------------------------------------------------------------------------
# Processes: everything started goes into PIDS and is stopped on exit.
# ---------------------------------------------------------------------------------------------
PIDS=()
TMP=""
KEEP_TMP="${BENCH_KEEP_TMP:-0}"

tree_pids() { # the pid and all its descendants
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2; pids[NR] = $1 }
    END {
      keep[root] = 1; changed = 1
      while (changed) { changed = 0
        for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } }
      for (p in keep) print p
    }'
}

proc_start() { # start time of a pid (clock ticks since boot): tells a pid from a reused one
  { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null || true; } | awk '{print $20}'
}

stop_pid() { # SIGTERM the process, SIGKILL it and its descendants if still there after 5 s
  local pid="$1" p st i snapshot=()
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  for p in $(tree_pids "$pid"); do snapshot+=("$p:$(proc_start "$p")"); done
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  for p in "${snapshot[@]}"; do # only the very processes seen above, not a pid reused since
    st="$(proc_start "${p%%:*}")"
    [[ -n "$st" && "$st" == "${p#*:}" ]] && kill -KILL "${p%%:*}" 2>/dev/null || true
  done
  wait "$pid" 2>/dev/null || true
}

KNOWN=() # pid:start-time of every process seen in the trees of the processes started
remember_tree() { # remember_tree PID: note its descendants (an nginx worker, say), so that they
  local p       # are stopped even if their parent dies first and leaves them orphaned
  for p in $(tree_pids "$1"); do KNOWN+=("$p:$(proc_start "$p")"); done
}

kill_noted() { # kill_noted PID:START...: SIGKILL those still alive with that very start time
  local p st
  for p in "$@"; do
    st="$(proc_start "${p%%:*}")"
    [[ -n "$st" && "$st" == "${p#*:}" ]] && kill -KILL "${p%%:*}" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  kill_noted "${KNOWN[@]+"${KNOWN[@]}"}"
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then
      info "temp dir kept: $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'info "interrupted: stopping everything this run started"; exit 130' INT TERM

LAST_PID=""
start_bg() { # start_bg NAME CPU STDOUT cmd...   (stderr goes to $TMP/logs/NAME.log)
  # exec all the way down, so that $! is the pid of the program itself (not of a bash subshell
  # whose CPU time and RSS would be counted with it)
  local name="$1" cpu="$2" out="$3"; shift 3
  if [[ -n "$cpu" ]]; then
    exec_bg taskset -c "$cpu" "$@" >"$out" 2>>"$TMP/logs/$name.log"
  else
    exec_bg "$@" >"$out" 2>>"$TMP/logs/$name.log"
  fi
  PIDS+=("$LAST_PID")
}
exec_bg() { "$@" & LAST_PID=$!; }

run_fg() { # run_fg CPU cmd... (redirect the call): run in the background and wait for it, so that
  # a SIGINT/SIGTERM to this script is handled at once (bash runs traps only between commands)
  local cpu="$1" rc=0; shift
  if [[ -n "$cpu" ]]; then exec_bg taskset -c "$cpu" "$@"; else exec_bg "$@"; fi
  PIDS+=("$LAST_PID")
  wait "$LAST_PID" || rc=$?
  unset 'PIDS[${#PIDS[@]}-1]'
  return $rc
}

stop_started() { # stop_started PID...: stop and forget
  local p q keep=()
  for p in "$@"; do stop_pid "$p"; done
  for q in "${PIDS[@]}"; do
    [[ " $* " == *" $q "* ]] || keep+=("$q")
  done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

EXIT_DESC=""
exit_status() { # how a started process that is gone ended -> EXIT_DESC (call it in this shell:
  local rc=0    # a $(...) subshell cannot wait for this shell's children)
  wait "$1" 2>/dev/null || rc=$?
  if ((rc > 128)); then EXIT_DESC="killed by signal $((rc - 128))"; else EXIT_DESC="exit status $rc"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() { # wait_http URL PID [HOST]: until URL answers 200 (30 s), while PID lives
  local url="$1" pid="$2" host="${3:-}" i code
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 ${host:+-H "Host: $host"} "$url" || true)"
    [[ "$code" == 200 ]] && { remember_tree "$pid"; return 0; }
    sleep 0.1
  done
  return 1
}

check_path() { # check_path URL: a GET with Host: origin returns 200 and the 1 KiB body
  local url="$1" code size
  code="$(curl -s -o "$TMP/check.body" -w '%{http_code}' --max-time 5 -H "Host: $HOST_HEADER" "$url" || true)"
  size="$(stat -c %s "$TMP/check.body" 2>/dev/null || echo 0)"
  if [[ "$code" != 200 || "$size" != "$BODY_BYTES" ]]; then
    info "check of $url failed: status $code, body $size bytes (want 200, $BODY_BYTES)"
    return 1
  fi
  cmp -s "$TMP/check.body" "$TMP/body.txt" || { info "check of $url: body differs from the origin's"; return 1; }
}

# ---------------------------------------------------------------------------------------------
# /proc sampling
# ---------------------------------------------------------------------------------------------
ticks_of() { # utime+stime (clock ticks) of a pid and its descendants
  local t=0 p v
  for p in $(tree_pids "$1"); do
    v="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')" || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

status_kb() { # status_kb PID FIELD: sum of /proc/<pid>/status FIELD (kB) over the process tree
  local t=0 p v
  for p in $(tree_pids "$1"); do
    v="$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null)" || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

core_times() { # "busy total" per cpuN line of /proc/stat
  awk '/^cpu[0-9]+ / { busy = $2 + $3 + $4 + $7 + $8 + $9; total = busy + $5 + $6; print $1, busy, total }' /proc/stat
}

machine_busy_pct() { # busy % of the whole machine over 0.5 s (100 = every core busy)
  local a b
  a="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)"
  sleep 0.5
  b="$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)"
  echo "$a $b" | awk '{ d = $4 - $2; print (d > 0) ? int(100 * ($3 - $1) / d) : 0 }'
}

QUIET_SPENT=0 # seconds spent so far waiting for quiet or re-measuring noisy runs
wait_quiet() { # other work on the machine (builds, tests) skews every figure: wait for it to stop
  local i busy t0=$SECONDS
  if ((QUIET_SPENT >= QUIET_BUDGET)); then return 0; fi
  for ((i = 0; i < 2 * QUIET_WAIT; i++)); do
    busy="$(machine_busy_pct)"
    ((busy <= QUIET_PCT)) && break
    ((i % 20 == 0)) && info "machine busy (${busy}% of all cores, not ours); waiting for it to settle (up to ${QUIET_WAIT}s)"
  done
  ((busy <= QUIET_PCT)) || info "WARNING: the machine is still busy (${busy}%); measuring anyway, see the 'unattributed CPU' column"
  ((i == 0)) || QUIET_SPENT=$((QUIET_SPENT + SECONDS - t0))
}
retry_noisy() { # retry_noisy ATTEMPT SECONDS_OF_THE_RUN: 0 if a noisy run should be measured again
  ((WIN_NOISE > NOISE_PCT)) || return 1
  if (($1 <= NOISY_RETRIES && QUIET_SPENT < QUIET_BUDGET)); then
    info "other work on the machine used ${WIN_NOISE}% of a core during the run (limit ${NOISE_PCT}%); measuring again"
    QUIET_SPENT=$((QUIET_SPENT + $2))
    return 0
  fi
  info "other work on the machine used ${WIN_NOISE}% of a core during the run (limit ${NOISE_PCT}%); keeping it, flagged"
  return 1
}

snap_children() { # bash `times` of this shell; must not run in a $(...) subshell, which would
  times >"$TMP/times.txt" # only see its own children
}
children_ms() { # user+sys ms of this shell's reaped children at the last snap_children
  awk 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60000 + a[2] * 1000 }
    printf "%d\n", t }' "$TMP/times.txt"
}

# ---------------------------------------------------------------------------------------------
# One wrk scenario: run_wrk KEY LABEL URL [NAME:PID ...]
#   sanity check, warm-up (discarded), measured run; CPU ticks of the named processes (and their
#   children) around the measured run, RSS at its end; one JSON line to results.jsonl.
# ---------------------------------------------------------------------------------------------
record_skip() { # record_skip KEY LABEL STATUS NOTE
  printf '{"key":"%s","label":"%s","status":"%s","round":%d,"note":"%s"}\n' "$1" "$2" "$3" "${ROUND:-0}" "${4//\"/\'}" >>"$TMP/results.jsonl"
}

# A measurement window: CPU ticks of the named processes, of the origin, of this shell's children
# (the load generator), and of every core, from window_begin to window_end.
#   window_begin NAME:PID ...   then   window_end  -> WIN_JSON (fragment), WIN_NOISE (% of a core
#   busy but charged to none of those: other work on the machine), WIN_DEAD (a process that died)
WIN_GROUPS=(); WIN_BEFORE=(); WIN_ORIGIN0=0; WIN_GEN0=0; WIN_CORES0=""; WIN_T0=0
WIN_JSON=""; WIN_NOISE=0; WIN_DEAD=""
window_begin() {
  local g
  WIN_GROUPS=("$@"); WIN_BEFORE=()
  for g in "${WIN_GROUPS[@]}"; do WIN_BEFORE+=("$(ticks_of "${g#*:}")"); done
  WIN_ORIGIN0="$(ticks_of "$UPSTREAM_PID")"
  snap_children; WIN_GEN0="$(children_ms)"
  WIN_CORES0="$(core_times)"
  WIN_T0="$(date +%s%N)"
}
window_end() {
  local t1 cores1 gen1 origin1 i name pid ticks gjson="" sep="" ours cjson busy
  t1="$(date +%s%N)"
  cores1="$(core_times)"
  snap_children; gen1="$(children_ms)"
  origin1="$(ticks_of "$UPSTREAM_PID")"
  WIN_DEAD=""
  ours=$(( (gen1 - WIN_GEN0) * CLK_TCK / 1000 ))
  for i in "${!WIN_GROUPS[@]}"; do
    name="${WIN_GROUPS[i]%%:*}"; pid="${WIN_GROUPS[i]#*:}"
    if ! kill -0 "$pid" 2>/dev/null; then
      exit_status "$pid"
      WIN_DEAD="$name (pid $pid, $EXIT_DESC)"
    fi
    ticks=$(($(ticks_of "$pid") - WIN_BEFORE[i]))
    ((pid == UPSTREAM_PID)) || ours=$((ours + ticks))
    gjson+="$sep{\"name\":\"$name\",\"ticks\":$ticks,\"rss_kb\":$(status_kb "$pid" VmRSS),\"hwm_kb\":$(status_kb "$pid" VmHWM),\"procs\":$(tree_pids "$pid" | wc -l)}"
    sep=","
  done
  ours=$((ours + origin1 - WIN_ORIGIN0))
  cjson="$(join -j1 <(echo "$WIN_CORES0" | sort) <(echo "$cores1" | sort) |
    awk 'BEGIN{ORS=""; sep=""} {printf "%s{\"cpu\":\"%s\",\"busy\":%d,\"total\":%d}", sep, $1, $4-$2, $5-$3; sep=","}')"
  busy="$(join -j1 <(echo "$WIN_CORES0" | sort) <(echo "$cores1" | sort) | awk '{b += $4 - $2} END {print b + 0}')"
  # unattributed busy time, in % of one core
  WIN_NOISE=$(( (busy - ours) * 100 * 1000000000 / CLK_TCK / (t1 - WIN_T0) ))
  ((WIN_NOISE >= 0)) || WIN_NOISE=0
  WIN_JSON="\"wall_ns\":$((t1 - WIN_T0)),\"groups\":[$gjson],\"cores\":[$cjson],\"origin_ticks\":$((origin1 - WIN_ORIGIN0)),\"gen_cpu_ms\":$((gen1 - WIN_GEN0)),\"noise_pct\":$WIN_NOISE"
}

FAIL_WHY=""
why_failed() { # why_failed WHAT NAME:PID... -> FAIL_WHY: WHAT, or which of the processes died
  local what="$1" g pid; shift
  FAIL_WHY="$what"
  for g in "$@"; do
    pid="${g#*:}"
    if ! kill -0 "$pid" 2>/dev/null; then
      exit_status "$pid"
      FAIL_WHY="${g%%:*} (pid $pid, $EXIT_DESC) exited during the run"
    fi
  done
}

# run_wrk KEY LABEL URL NAME:PID...: sanity check, warm-up (discarded), measured run; repeated
# (up to BENCH_NOISY_RETRIES times) when other work on the machine took more than BENCH_NOISE_PCT
# of a core during it. One JSON line to results.jsonl.
run_wrk() {
  local key="$1" label="$2" url="$3"; shift 3
  local attempt wrkjson
  ensure_origin
  check_path "$url" || { record_skip "$key" "$label" failed "sanity check failed (see log)"; return 1; }
  for ((attempt = 1; attempt <= 1 + NOISY_RETRIES; attempt++)); do
    wait_quiet
    info "warm-up ${WARMUP}s"
    run_fg "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" --timeout 5s -H "Host: $HOST_HEADER" "$url" \
      >"$TMP/logs/wrk-$key-warmup.log" 2>&1 || { why_failed "wrk warm-up failed" "$@"; record_skip "$key" "$label" failed "$FAIL_WHY"; return 1; }
    window_begin "$@"
    info "measuring ${DURATION}s: wrk -t1 -c$CONNS -d${DURATION}s --latency -H 'Host: $HOST_HEADER' $url"
    run_fg "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency \
      -H "Host: $HOST_HEADER" -s "$HERE/wrk-report.lua" "$url" >"$TMP/logs/wrk-$key.log" 2>&1 \
      || { why_failed "wrk failed (see its log)" "$@"; record_skip "$key" "$label" failed "$FAIL_WHY"; return 1; }
    window_end
    [[ -z "$WIN_DEAD" ]] || { record_skip "$key" "$label" failed "$WIN_DEAD exited during the run"; return 1; }
    grep -E 'Requests/sec|Latency  |Non-2xx|Socket errors' "$TMP/logs/wrk-$key.log" | sed 's/^/   /' >&2 || true
    retry_noisy "$attempt" $((WARMUP + DURATION)) || break
  done
  wrkjson="$(sed -n 's/^WRKJSON //p' "$TMP/logs/wrk-$key.log")"
  [[ -n "$wrkjson" ]] || { record_skip "$key" "$label" failed "no WRKJSON line from wrk"; return 1; }
  printf '{"key":"%s","label":"%s","status":"ok","round":%d,"url":"%s","attempts":%d,"wrk":%s,%s}\n' \
    "$key" "$label" "$ROUND" "$url" "$((attempt > 1 + NOISY_RETRIES ? attempt - 1 : attempt))" "$wrkjson" "$WIN_JSON" >>"$TMP/results.jsonl"
}

# ---------------------------------------------------------------------------------------------
# Peers' configs
# ---------------------------------------------------------------------------------------------
write_upstream_conf() {
  cat >"$TMP/upstream.conf" <<EOF
# origin: 1 worker, answers every request from memory with the same 1 KiB body.
worker_processes 1;
pid $TMP/upstream.pid;
error_log $TMP/logs/upstream-error.log notice;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx-tmp/up-body;
  proxy_temp_path $TMP/nginx-tmp/up-proxy;
  fastcgi_temp_path $TMP/nginx-tmp/up-fcgi;
  uwsgi_temp_path $TMP/nginx-tmp/up-uwsgi;
  scgi_temp_path $TMP/nginx-tmp/up-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  default_type text/plain;
  server {
    listen 127.0.0.1:$P_UPSTREAM backlog=4096;
    location / { return 200 "$(cat "$TMP/body.txt")"; }
  }
}
EOF
}

write_nginx_proxy_conf() {
  cat >"$TMP/nginx-proxy.conf" <<EOF
# nginx as a reverse proxy: 1 worker, keep-alive pool to the origin, no access log.
worker_processes 1;
pid $TMP/nginx-proxy.pid;
error_log $TMP/logs/nginx-proxy-error.log notice;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx-tmp/px-body;
  proxy_temp_path $TMP/nginx-tmp/px-proxy;
  fastcgi_temp_path $TMP/nginx-tmp/px-fcgi;
  uwsgi_temp_path $TMP/nginx-tmp/px-uwsgi;
  scgi_temp_path $TMP/nginx-tmp/px-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  upstream origin {
    server 127.0.0.1:$P_UPSTREAM;
    keepalive 64;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
EOF
}

write_haproxy_conf() {
  cat >"$TMP/haproxy.cfg" <<EOF
# haproxy: 1 thread, http mode, keep-alive both sides, idle server connections reused.
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend origin
backend origin
  server origin 127.0.0.1:$P_UPSTREAM
EOF
}

# write_sidecar_conf NAME OUT IN ADMIN CTXPORT TLS ENDPOINT ACCESSLOG LEVEL
write_sidecar_conf() {
  local name="$1" out="$2" in="$3" admin="$4" ctx="$5" tls="$6" endpoint="$7" alog="$8" level="$9"
  cat >"$TMP/sidecar-$name.yaml" <<EOF
node: { id: $name, cluster: bench }
identity: { cert: $TMP/certs/$name/cert.pem, key: $TMP/certs/$name/key.pem, ca: $TMP/certs/$name/ca.pem }
inbound:  { port: $in, address: 127.0.0.1, app: "http://127.0.0.1:$P_UPSTREAM", allow: ["spiffe://ctxmesh.local/ns/default/sa/*"] }
outbound: { port: $out }
admin:    { port: $admin }
context:  { port: $ctx, checkpoint: { dir: "$TMP/data-$name" } }
log: { level: $level, accessLog: $alog }
drainTimeout: 2s
clusters:
  - name: origin
    domains: ["$HOST_HEADER"]
    lb: round_robin
    tls: $tls
    endpoints: [{ address: "$endpoint" }]
EOF
}

# ---------------------------------------------------------------------------------------------
# ctxmesh
# ---------------------------------------------------------------------------------------------
CTXMESH_OK=0
CTXMESH_WHY=""
prepare_ctxmesh() {
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && -z "${BENCH_CTXMESH_CLI:-}" ]] &&
    { [[ ! -f "$CLI" ]] || [[ -n "$(find src -name '*.ts' -newer "$CLI" 2>/dev/null | head -1)" ]]; }; then
    if [[ -f package.json && -d node_modules ]]; then
      say "building ctxmesh (npm run build)"
      if ! npm run build --silent >"$TMP/logs/build.log" 2>&1; then
        tail -20 "$TMP/logs/build.log" | sed 's/^/   /' >&2
        [[ -f "$CLI" ]] || { CTXMESH_WHY="npm run build failed"; return 1; }
        info "build failed; benchmarking the existing dist/ (may be stale)"
      fi
    fi
  fi
  [[ -f "$CLI" ]] || { CTXMESH_WHY="${CLI#"$ROOT/"} missing (npm ci && npm run build)"; return 1; }
  node "$CLI" sidecar --help >/dev/null 2>&1 || { CTXMESH_WHY="'ctxmesh sidecar --help' fails"; return 1; }
  node "$CLI" certs init --help >/dev/null 2>&1 || { CTXMESH_WHY="'ctxmesh certs init --help' fails"; return 1; }
  say "certificates (ctxmesh certs init / issue)"
  node "$CLI" certs init --out "$TMP/certs" >"$TMP/logs/certs.log" 2>&1 \
    || { CTXMESH_WHY="ctxmesh certs init failed"; tail -5 "$TMP/logs/certs.log" >&2; return 1; }
  local n
  for n in p a b; do
    node "$CLI" certs issue --ca "$TMP/certs" --name "$n" --out "$TMP/certs/$n" >>"$TMP/logs/certs.log" 2>&1 \
      || { CTXMESH_WHY="ctxmesh certs issue failed"; tail -5 "$TMP/logs/certs.log" >&2; return 1; }
    [[ -s "$TMP/certs/$n/cert.pem" && -s "$TMP/certs/$n/key.pem" && -s "$TMP/certs/$n/ca.pem" ]] \
      || { CTXMESH_WHY="certs issue did not write cert.pem/key.pem/ca.pem"; return 1; }
  done
  CTXMESH_OK=1
}

start_sidecar() { # start_sidecar NAME ADMINPORT STDOUT  -> LAST_PID
  local name="$1" admin="$2" out="$3" i code
  # With the node flags of the CLI's shebang, as deployed (bench/cli-node-flags.mjs).
  start_bg "sidecar-$name" "$PROXY_CPU" "$out" node $(node "$ROOT/bench/cli-node-flags.mjs" "$CLI") "$CLI" sidecar -c "$TMP/sidecar-$name.yaml"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$LAST_PID" 2>/dev/null || break
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$admin/ready" || true)"
    [[ "$code" == 200 ]] && { remember_tree "$LAST_PID"; return 0; }
    sleep 0.1
  done
  info "sidecar $name did not become ready; its log:"
  tail -20 "$TMP/logs/sidecar-$name.log" | sed 's/^/   /' >&2
  return 1
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
ensure_tools
TMP="$(mktemp -d /tmp/ctxmesh-bench.XXXXXX)"
chmod 755 "$TMP"
mkdir -p "$TMP/logs" "$TMP/nginx-tmp"
: >"$TMP/results.jsonl"

for p in "$P_UPSTREAM" "$P_NGINX" "$P_HAPROXY" "$P_NAIVE" "${SC_P[@]}" "${SC_A[@]}" "${SC_B[@]}"; do
  port_in_use "$p" && die "port 127.0.0.1:$p is in use (set BENCH_PORT_BASE to move the benchmark's ports)"
done

# The 1 KiB body: printable, no characters that need escaping in nginx's config.
node -e 'const a="abcdefghijklmnopqrstuvwxyz0123456789";let s="";for(let i=0;i<1024;i++)s+=a[(i*7)%a.length];process.stdout.write(s)' >"$TMP/body.txt"

NGINX_V="$( (nginx -v 2>&1 || true) | sed 's/.*nginx\///')"
HAPROXY_V="$( (haproxy -v 2>&1 || true) | head -1 | awk '{print $3}')"
WRK_V="$( (wrk -v 2>&1 || true) | head -1 | awk '{print $2}')"
cat >"$TMP/meta.json" <<EOF
{"date":"$(date -u +%Y-%m-%dT%H:%MZ)","host_cpus":$NCPU,"cpu_model":"$(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)",
 "kernel":"$(uname -r)","os":"$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")",
 "node":"$(node --version)","nginx":"$NGINX_V","haproxy":"$HAPROXY_V","wrk":"$WRK_V",
 "duration_s":$DURATION,"rounds":$ROUNDS,"warmup_s":$WARMUP,"connections":$CONNS,"rate":$RATE,"rate_duration_s":$RATE_DURATION,
 "loadgen_cpu":"$LOADGEN_CPU","upstream_cpu":"$UPSTREAM_CPU","proxy_cpu":"$PROXY_CPU","clk_tck":$CLK_TCK,"noise_pct_limit":$NOISE_PCT,
 "body_bytes":$BODY_BYTES,"only":"$ONLY","git":"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)"}
EOF

say "ctxmesh proxy benchmark — $NCPU CPUs; pinning: load generator cpu ${LOADGEN_CPU:-any}, origin cpu ${UPSTREAM_CPU:-any}, proxies cpu ${PROXY_CPU:-any}"
info "temp dir $TMP; $ROUNDS rounds x ${DURATION}s per scenario (each after ${WARMUP}s warm-up); $CONNS connections; ${BODY_BYTES} B responses"

if want ctxmesh || want ctxmesh-log || want ctxmesh-mtls || want fixed-rate; then
  prepare_ctxmesh || { say "ctxmesh: SKIPPED — $CTXMESH_WHY"; info "the ctxmesh rows are reported as pending"; }
fi
if [[ -f "$CLI" ]]; then # which ctxmesh was measured: the tree's commit and the build's time
  echo "{\"ctxmesh_built\":\"$(date -u -r "$CLI" +%Y-%m-%dT%H:%MZ)\",\"ctxmesh_tree_dirty\":$([[ -n "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null)" ]] && echo true || echo false)}" >"$TMP/meta-ctxmesh.json"
fi

say "origin: nginx $NGINX_V, 1 worker, return 200 (1 KiB) on 127.0.0.1:$P_UPSTREAM"
write_upstream_conf
UPSTREAM_PID=""
start_origin() {
  start_bg upstream "$UPSTREAM_CPU" "$TMP/logs/upstream.out" nginx -e "$TMP/logs/upstream-error.log" -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;'
  UPSTREAM_PID=$LAST_PID
  wait_http "http://127.0.0.1:$P_UPSTREAM/" "$UPSTREAM_PID" || die "origin nginx did not start: $(tail -5 "$TMP/logs/upstream-error.log" 2>/dev/null)"
  check_path "http://127.0.0.1:$P_UPSTREAM/" || die "origin does not serve the 1 KiB body"
  ORIGIN_TREE=()
  local p
  for p in $(tree_pids "$UPSTREAM_PID"); do ORIGIN_TREE+=("$p:$(proc_start "$p")"); done
}
ensure_origin() { # something else on the machine may have killed it: say so, and start it again
  kill -0 "$UPSTREAM_PID" 2>/dev/null && return 0
  info "WARNING: the origin nginx (pid $UPSTREAM_PID) is gone — killed by something outside this script? Restarting it."
  tail -3 "$TMP/logs/upstream-error.log" 2>/dev/null | sed 's/^/   /' >&2 || true
  stop_started "$UPSTREAM_PID"
  kill_noted "${ORIGIN_TREE[@]}" # a worker left behind by a killed master still holds the port
  sleep 0.2
  start_origin
}
start_origin

# The wrk scenarios. Each function runs one round of its scenario with fresh proxy processes;
# rounds are interleaved (every scenario once, then every scenario again, ...) so that a slow drift
# of the machine (other VMs on the host, turbo) spreads over all of them instead of favouring one.
scen_direct() {
  say "[round $1/$ROUNDS] 1. direct to the origin (no proxy)"
  ensure_origin
  run_wrk direct "direct (no proxy)" "http://127.0.0.1:$P_UPSTREAM/" "origin:$UPSTREAM_PID" || true
}

scen_ctxmesh() {
  local label="ctxmesh plain hop (1 sidecar)" pid
  say "[round $1/$ROUNDS] 2. ctxmesh, one sidecar, plain hop (tls: none), access log off"
  ((CTXMESH_OK)) || { (($1 > 1)) || record_skip ctxmesh "$label" pending "$CTXMESH_WHY"; return 0; }
  ensure_origin
  write_sidecar_conf p "${SC_P[0]}" "${SC_P[1]}" "${SC_P[2]}" "${SC_P[3]}" none "127.0.0.1:$P_UPSTREAM" false warn
  if start_sidecar p "${SC_P[2]}" "$TMP/logs/sidecar-p.out"; then
    pid=$LAST_PID
    run_wrk ctxmesh "$label" "http://127.0.0.1:${SC_P[0]}/" "sidecar:$pid" || true
    stop_started "$pid"
  else
    record_skip ctxmesh "$label" failed "sidecar did not start"
  fi
}

scen_ctxmesh_log() {
  local label="ctxmesh plain hop, access log on" pid
  say "[round $1/$ROUNDS] 2b. ctxmesh, one sidecar, plain hop, access log ON (stdout to /dev/null)"
  ((CTXMESH_OK)) || { (($1 > 1)) || record_skip ctxmesh-log "$label" pending "$CTXMESH_WHY"; return 0; }
  ensure_origin
  write_sidecar_conf p "${SC_P[0]}" "${SC_P[1]}" "${SC_P[2]}" "${SC_P[3]}" none "127.0.0.1:$P_UPSTREAM" true info
  if (($1 == 1)) && start_sidecar p "${SC_P[2]}" "$TMP/logs/sidecar-p-accesslog.out"; then
    # First make sure the access log is really written (a few requests, stdout to a file) ...
    pid=$LAST_PID
    for _ in 1 2 3; do curl -s -o /dev/null -H "Host: $HOST_HEADER" "http://127.0.0.1:${SC_P[0]}/" || true; done
    sleep 0.5
    ALOG_LINES="$(grep -c '"kind":"access"' "$TMP/logs/sidecar-p-accesslog.out" || true)"
    info "access log check: $ALOG_LINES access-log line(s) (\"kind\":\"access\") on stdout for 3 requests"
    stop_started "$pid"
  fi
  # ... then measure with stdout to /dev/null.
  if start_sidecar p "${SC_P[2]}" /dev/null; then
    pid=$LAST_PID
    run_wrk ctxmesh-log "$label" "http://127.0.0.1:${SC_P[0]}/" "sidecar:$pid" || true
    stop_started "$pid"
  else
    record_skip ctxmesh-log "$label" failed "sidecar did not start"
  fi
}

start_mtls_pair() { # -> A_PID B_PID
  write_sidecar_conf a "${SC_A[0]}" "${SC_A[1]}" "${SC_A[2]}" "${SC_A[3]}" mesh "127.0.0.1:${SC_B[1]}" false warn
  write_sidecar_conf b "${SC_B[0]}" "${SC_B[1]}" "${SC_B[2]}" "${SC_B[3]}" none "127.0.0.1:$P_UPSTREAM" false warn
  start_sidecar b "${SC_B[2]}" "$TMP/logs/sidecar-b.out" || return 1
  B_PID=$LAST_PID
  start_sidecar a "${SC_A[2]}" "$TMP/logs/sidecar-a.out" || return 1
  A_PID=$LAST_PID
}

scen_ctxmesh_mtls() {
  local label="ctxmesh 2 sidecars, mTLS"
  say "[round $1/$ROUNDS] 3. ctxmesh, two sidecars: A outbound -> mTLS -> B inbound -> origin"
  ((CTXMESH_OK)) || { (($1 > 1)) || record_skip ctxmesh-mtls "$label" pending "$CTXMESH_WHY"; return 0; }
  ensure_origin
  A_PID=""; B_PID=""
  if start_mtls_pair; then
    run_wrk ctxmesh-mtls "$label" "http://127.0.0.1:${SC_A[0]}/" "sidecar-a:$A_PID" "sidecar-b:$B_PID" || true
  else
    record_skip ctxmesh-mtls "$label" failed "sidecars did not start"
  fi
  stop_started ${A_PID:+"$A_PID"} ${B_PID:+"$B_PID"}
}

scen_nginx() {
  local label="nginx $NGINX_V (1 worker)" pid
  say "[round $1/$ROUNDS] 4. nginx $NGINX_V reverse proxy (1 worker, keep-alive upstream pool)"
  ensure_origin
  write_nginx_proxy_conf
  start_bg nginx-proxy "$PROXY_CPU" "$TMP/logs/nginx-proxy.out" nginx -e "$TMP/logs/nginx-proxy-error.log" -p "$TMP" -c "$TMP/nginx-proxy.conf" -g 'daemon off;'
  pid=$LAST_PID
  if wait_http "http://127.0.0.1:$P_NGINX/" "$pid"; then
    run_wrk nginx "$label" "http://127.0.0.1:$P_NGINX/" "nginx:$pid" || true
  else
    record_skip nginx "$label" failed "nginx did not start"
  fi
  stop_started "$pid"
}

scen_haproxy() {
  local label="haproxy $HAPROXY_V (1 thread)" pid
  say "[round $1/$ROUNDS] 5. haproxy $HAPROXY_V (nbthread 1, http mode, keep-alive)"
  ensure_origin
  write_haproxy_conf
  haproxy -c -q -f "$TMP/haproxy.cfg" >"$TMP/logs/haproxy-check.log" 2>&1 || die "haproxy config invalid: $(cat "$TMP/logs/haproxy-check.log")"
  start_bg haproxy "$PROXY_CPU" "$TMP/logs/haproxy.out" haproxy -db -f "$TMP/haproxy.cfg"
  pid=$LAST_PID
  if wait_http "http://127.0.0.1:$P_HAPROXY/" "$pid"; then
    run_wrk haproxy "$label" "http://127.0.0.1:$P_HAPROXY/" "haproxy:$pid" || true
  else
    record_skip haproxy "$label" failed "haproxy did not start"
  fi
  stop_started "$pid"
}

# A scenario that is one Node process on the proxy core: start it, wait for it, measure, stop it.
scen_node_process() { # scen_node_process ROUND KEY LABEL PORT TITLE script args...
  local round="$1" key="$2" label="$3" port="$4" title="$5" pid; shift 5
  say "[round $round/$ROUNDS] $title"
  ensure_origin
  start_bg "$key" "$PROXY_CPU" "$TMP/logs/$key.out" node "$@"
  pid=$LAST_PID
  if wait_http "http://127.0.0.1:$port/" "$pid"; then
    run_wrk "$key" "$label" "http://127.0.0.1:$port/" "$key:$pid" || true
  else
    record_skip "$key" "$label" failed "$key did not start"
  fi
  stop_started "$pid"
}

scen_naive() {
  scen_node_process "$1" naive "naive Node proxy" "$P_NAIVE" \
    "6. naive Node proxy (node:http + keep-alive Agent), node $(node --version)" \
    "$HERE/naive-proxy.mjs" --listen "127.0.0.1:$P_NAIVE" --upstream "127.0.0.1:$P_UPSTREAM"
}

# The floor of a Node proxy, measured beside ctxmesh so that the gap to nginx can be split into
# what Node's HTTP stack costs and what ctxmesh adds on top of it.
scen_floor() {
  scen_node_process "$1" floor "floor: node:http + undici Pool, no features" "$P_FLOOR" \
    "7. floor proxy (node:http server + undici Pool, nothing else)" \
    "$HERE/floor-proxy.mjs" --port "$P_FLOOR" --upstream "127.0.0.1:$P_UPSTREAM"
}

scen_node_origin() {
  scen_node_process "$1" node-origin "floor: bare node:http server (server half only, no upstream)" "$P_NODE_ORIGIN" \
    "8. bare node:http server answering 1 KiB (on the proxy core)" \
    "$HERE/node-origin.mjs" --port "$P_NODE_ORIGIN" --body "$TMP/body.txt"
}

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  if want direct; then scen_direct "$ROUND"; fi
  if want ctxmesh; then scen_ctxmesh "$ROUND"; fi
  if want ctxmesh-log; then scen_ctxmesh_log "$ROUND"; fi
  if want ctxmesh-mtls; then scen_ctxmesh_mtls "$ROUND"; fi
  if want nginx; then scen_nginx "$ROUND"; fi
  if want haproxy; then scen_haproxy "$ROUND"; fi
  if want naive; then scen_naive "$ROUND"; fi
  if want floor; then scen_floor "$ROUND"; fi
  if want node-origin; then scen_node_origin "$ROUND"; fi
done

# 7. fixed rate: direct vs the mTLS pair, open loop
fixed_rate() { # fixed_rate KEY URL NAME:PID... -> $TMP/fixed-KEY.json (retried when noisy, as run_wrk)
  local key="$1" url="$2" attempt json g idle="" sep=""; shift 2
  ensure_origin
  for g in "$@"; do # RSS before any load: the baseline of each process
    idle+="$sep\"${g%%:*}\":$(status_kb "${g#*:}" VmRSS)"; sep=","
  done
  for ((attempt = 1; attempt <= 1 + NOISY_RETRIES; attempt++)); do
    wait_quiet
    window_begin "$@"
    run_fg "$LOADGEN_CPU" node "$HERE/fixed-rate.mjs" --url "$url" --host "$HOST_HEADER" --rate "$RATE" \
      --duration "$RATE_DURATION" --warmup "$WARMUP" --connections "$CONNS" --expect-bytes "$BODY_BYTES" --label "$key" \
      >"$TMP/logs/fixed-$key.log" 2>&1 || return 1
    window_end
    [[ -z "$WIN_DEAD" ]] || { info "$WIN_DEAD exited during the run"; return 1; }
    json="$(sed -n 's/^FIXEDRATEJSON //p' "$TMP/logs/fixed-$key.log")"
    [[ -n "$json" ]] || return 1
    info "$(echo "$json" | node -e 'const j=JSON.parse(require("fs").readFileSync(0,"utf8"));console.log(`${j.ok} ok, ${Object.values(j.errors).reduce((a,b)=>a+b,0)} errors; latency p50 ${(j.service_us.p50/1000).toFixed(2)} ms, p99 ${(j.service_us.p99/1000).toFixed(2)} ms, max ${(j.service_us.max/1000).toFixed(2)} ms; generator lateness p99 ${(j.lateness_us.p99/1000).toFixed(2)} ms`)')"
    retry_noisy "$attempt" $((WARMUP + RATE_DURATION)) || break
  done
  printf '{"attempts":%d,"idle_rss_kb":{%s},"gen":%s,%s}\n' "$((attempt > 1 + NOISY_RETRIES ? attempt - 1 : attempt))" "$idle" "$json" "$WIN_JSON" >"$TMP/fixed-$key.json"
}
if want fixed-rate; then
  say "7. fixed rate: $RATE req/s for ${RATE_DURATION}s (after ${WARMUP}s at the same rate), open loop, direct vs 2 sidecars + mTLS"
  ensure_origin
  info "direct"
  fixed_rate direct "http://127.0.0.1:$P_UPSTREAM/" "origin:$UPSTREAM_PID" || info "fixed-rate direct run failed (see $TMP/logs/fixed-direct.log)"
  if ((CTXMESH_OK)); then
    A_PID=""; B_PID=""
    if start_mtls_pair && check_path "http://127.0.0.1:${SC_A[0]}/"; then
      info "through sidecar A -> mTLS -> sidecar B (fresh processes)"
      fixed_rate mtls "http://127.0.0.1:${SC_A[0]}/" "sidecar-a:$A_PID" "sidecar-b:$B_PID" \
        || info "fixed-rate mTLS run failed (see $TMP/logs/fixed-mtls.log)"
    else
      info "fixed-rate mTLS run skipped: the sidecar pair did not start"
    fi
    stop_started ${A_PID:+"$A_PID"} ${B_PID:+"$B_PID"}
    # One hop each, to tell what a single Node hop adds at this rate on this machine.
    write_sidecar_conf p "${SC_P[0]}" "${SC_P[1]}" "${SC_P[2]}" "${SC_P[3]}" none "127.0.0.1:$P_UPSTREAM" false warn
    if start_sidecar p "${SC_P[2]}" "$TMP/logs/sidecar-p.out"; then
      P_PID=$LAST_PID
      info "through one ctxmesh sidecar (plain hop)"
      fixed_rate plain "http://127.0.0.1:${SC_P[0]}/" "sidecar-p:$P_PID" || info "fixed-rate plain-hop run failed"
      stop_started "$P_PID"
    fi
  fi
  start_bg floor "$PROXY_CPU" "$TMP/logs/floor.out" node "$HERE/floor-proxy.mjs" --port "$P_FLOOR" --upstream "127.0.0.1:$P_UPSTREAM"
  F_PID=$LAST_PID
  if wait_http "http://127.0.0.1:$P_FLOOR/" "$F_PID"; then
    info "through the floor proxy (node:http + undici, one hop)"
    fixed_rate floor "http://127.0.0.1:$P_FLOOR/" "floor:$F_PID" || info "fixed-rate floor run failed"
  fi
  stop_started "$F_PID"
fi

stop_started "$UPSTREAM_PID"

say "report"
mkdir -p "$ROOT/bench/.out"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
node "$HERE/report.mjs" "$TMP" "$ROOT/bench/.out/proxy-$STAMP" ${CTXMESH_WHY:+--pending "$CTXMESH_WHY"}
cp "$ROOT/bench/.out/proxy-$STAMP.md" "$ROOT/bench/.out/proxy-latest.md"
info "report saved: bench/.out/proxy-$STAMP.md (and .json); raw logs in the temp dir with BENCH_KEEP_TMP=1"

if [[ "${BENCH_STRICT:-0}" == 1 ]] && ((!CTXMESH_OK)); then
  die "BENCH_STRICT=1 and ctxmesh could not be measured: $CTXMESH_WHY"
fi
