#!/usr/bin/env bash
# ctxmesh replication benchmark (issue 4): replicated writes beside unreplicated ones, and
# anti-entropy beside a naive full transfer, in one run.
#
#   bash bench/replication/run.sh
#
#   1. writes ([writes.mjs](writes.mjs)): three `ctxmesh sidecar` processes, RF=3, real mTLS between
#      them on 127.0.0.1, PUTs of small contexts through sidecar A's context API at eventual,
#      session and strong (chosen by key prefix through context.replication.levels), against the
#      same sidecar alone with replication off: closed-loop writes/s and p50/p99 at each
#      concurrency, and p50/p99 at a fixed open-loop rate (from the scheduled send time);
#   2. anti-entropy ([anti-entropy.mjs](anti-entropy.mjs)): 100k keys on two replicas, 1% diverged
#      on one, one Merkle round to repair (time, bytes) against a naive full transfer;
#   3. profile (BENCH_PROFILE=1, the default): the three sidecars under node --cpu-prof during a short
#      strong run, top frames by self time.
# Prints a Markdown report ([report.mjs](report.mjs)) and saves it as
# bench/.out/replication-<UTC>.md (+ .json, replication-latest.md). Everything started is stopped
# on exit. Knobs (environment):
#   BENCH_REPL_CONNS="1 16 64"  closed-loop concurrencies (undici Pool connections = workers)
#   BENCH_DURATION=5 BENCH_WARMUP=1  seconds measured / of warm-up per closed-loop point and per open-loop run
#   BENCH_REPL_RATE=1000 BENCH_REPL_RATE_DURATION=10 BENCH_REPL_RATE_CONNS=64   the open-loop run
#   BENCH_ROUNDS=1             rounds (fresh sidecars each, order alternated); medians in the report
#   BENCH_REPL_VALUE_BYTES=256 BENCH_REPL_KEYS=10000   value size; keys written round-robin per mode
#   BENCH_REPL_FSYNC=none      context.wal.fsync of every sidecar (always | batch | none)
#   BENCH_REPL_MODES="single eventual session strong strong-tokenless"   rows to run (strong-tokenless:
#                              strong writes from clients that echo no ctxmesh-session token)
#   BENCH_REPL_CPUS="1 0 0"    per-sidecar pinning (A B C; the default on 2+ CPUs): the coordinator alone on
#                              the unreplicated sidecar's core, the replicas beside the load generator
#   BENCH_LOADGEN_CPU=0 BENCH_SERVER_CPU=1   taskset pinning of the load generator and of every
#                              sidecar; setting BENCH_SERVER_CPU puts all three on it ("" = unpinned)
#   BENCH_AE_KEYS=100000 BENCH_AE_VALUE_BYTES=512 BENCH_AE_DIVERGED_PCT=1 BENCH_AE_ROUNDS=3   anti-entropy
#   BENCH_REPL_ONLY="writes ae"   parts to run
#   BENCH_REPL_SIDECAR_NODE_FLAGS="--trace-gc" BENCH_REPL_KEEP_OUTPUT=1   more node flags for every
#                              sidecar; keep each sidecar's whole output in <its dir>/output.log (with BENCH_KEEP_TMP=1)
#   BENCH_REPL_PORT_BASE=19600 the sidecars' ports count up from here (kept below the ephemeral range)
#   BENCH_PROFILE=1            profile the three sidecars (node --cpu-prof) during one closed-loop run
#                              at BENCH_REPL_PROFILE_LEVEL=strong, c=BENCH_REPL_PROFILE_CONNS=16; 0 = skip
#   BENCH_SKIP_BUILD=1 BENCH_CTXMESH_CLI=path BENCH_CTXMESH_REV=text BENCH_KEEP_TMP=1   as in the
#                              other benchmarks (another build: its dist/src/cli/main.js, and what it was built from)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/bench/replication"
cd "$ROOT"

# The knobs set for this run, quoted, for the report's command line.
USER_ENV="$(env | { grep -E '^BENCH_[A-Z_]+=' || true; } | sort | sed -E "s/^([A-Z_]+)=(.*)$/\1='\2'/" | tr '\n' ' ' | sed 's/ $//; s/["\\]//g')"
ONLY="${BENCH_REPL_ONLY:-writes ae}"
PROFILE="${BENCH_PROFILE:-1}"
KEEP_TMP="${BENCH_KEEP_TMP:-0}"
CLI="${BENCH_CTXMESH_CLI:-$ROOT/dist/src/cli/main.js}"
if [[ "$(nproc)" -ge 2 ]]; then
  # Unless told otherwise: the coordinator alone on the core the unreplicated sidecar has, the two
  # replicas beside the generator. Two cores cannot give four processes one each; this way the
  # coordinator is measured as the unreplicated sidecar is, and the replicas' CPU is still paid.
  [[ -n "${BENCH_SERVER_CPU+set}" ]] || export BENCH_REPL_CPUS="${BENCH_REPL_CPUS-1 0 0}"
  LOADGEN_CPU="${BENCH_LOADGEN_CPU-0}"; export BENCH_SERVER_CPU="${BENCH_SERVER_CPU-1}"
else
  LOADGEN_CPU="${BENCH_LOADGEN_CPU-}"; export BENCH_SERVER_CPU="${BENCH_SERVER_CPU-}"
fi
export BENCH_CLK_TCK="$(getconf CLK_TCK)" BENCH_CTXMESH_CLI="$CLI"

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
info() { printf '   %s\n' "$*" >&2; }
die() { printf '\nbench/replication: ERROR: %s\n' "$*" >&2; exit 1; }
want() { [[ " $ONLY " == *" $1 "* ]]; }
pinned() { local cpu="$1"; shift; if [[ -n "$cpu" ]]; then taskset -c "$cpu" "$@"; else "$@"; fi; }

TMP=""
CHILD=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The Node drivers stop their own sidecars on exit; this stops a driver still running (Ctrl-C).
  [[ -n "$CHILD" ]] && kill -TERM "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null || true
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then info "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'info "interrupted: stopping everything this run started"; exit 130' INT TERM
run_bg() { "$@" & CHILD=$!; wait "$CHILD"; local rc=$?; CHILD=""; return $rc; } # so Ctrl-C is handled at once

for t in node taskset getconf; do command -v "$t" >/dev/null 2>&1 || die "missing $t"; done
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 && "$CLI" == "$ROOT/dist/src/cli/main.js" ]] &&
  { [[ ! -f "$CLI" ]] || [[ -n "$(find src -name '*.ts' -newer "$CLI" | head -1)" ]]; }; then
  say "building ctxmesh (npx tsc -p tsconfig.json --noEmitOnError)"
  # --noEmitOnError: a tree that does not compile (someone mid-edit) must not overwrite dist/.
  npx tsc -p tsconfig.json --noEmitOnError >&2 || die "build failed (dist/ left as it was; BENCH_SKIP_BUILD=1 runs it anyway)"
fi
[[ -f "$CLI" ]] || die "${CLI#"$ROOT/"} missing (npm ci && npm run build)"

TMP="$(mktemp -d /tmp/ctxmesh-repl-bench.XXXXXX)"
mkdir -p "$TMP/logs"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

if want writes; then
  say "certificates (ctxmesh certs init / issue), one identity per sidecar"
  node "$CLI" certs init --out "$TMP/certs" >"$TMP/logs/certs.log" 2>&1 || die "ctxmesh certs init failed"
  for id in repl-a repl-b repl-c; do
    node "$CLI" certs issue --ca "$TMP/certs" --name "$id" --out "$TMP/certs/$id" >>"$TMP/logs/certs.log" 2>&1 \
      || die "ctxmesh certs issue $id failed"
  done
  say "writes: unreplicated vs RF=3 (eventual, session, strong); load on cpu${LOADGEN_CPU:-any}, sidecars on cpu${BENCH_REPL_CPUS:-${BENCH_SERVER_CPU:-any}}"
  profile_args=()
  [[ "$PROFILE" == 1 ]] && profile_args=(--profile "$TMP/profiles")
  run_bg pinned "$LOADGEN_CPU" node "$HERE/writes.mjs" --work "$TMP/sidecars" --certs "$TMP/certs" \
    --out "$TMP/writes.json" "${profile_args[@]+"${profile_args[@]}"}" || die "writes benchmark failed"
  if [[ "$PROFILE" == 1 ]]; then
    node -e 'for (const p of JSON.parse(require("fs").readFileSync(process.argv[1])).profiles) console.log([p.id, p.role, p.skipMs, p.spanMs, p.file].join("\t"))' \
      "$TMP/writes.json" | while IFS=$'\t' read -r id role skip span file; do
      [[ -n "$file" ]] || { info "no profile written by $id"; continue; }
      node "$ROOT/bench/state/profile-top.mjs" --label "$id ($role), ${BENCH_REPL_PROFILE_LEVEL:-strong} PUTs, c=${BENCH_REPL_PROFILE_CONNS:-16}" \
        --skip-ms "$skip" --span-ms "$span" "$file" >>"$TMP/profiles.md"
    done
  fi
fi

if want ae; then
  say "anti-entropy: ${BENCH_AE_KEYS:-100000} keys, ${BENCH_AE_DIVERGED_PCT:-1}% diverged on one replica, vs a naive full transfer"
  run_bg pinned "${BENCH_SERVER_CPU}" node "$HERE/anti-entropy.mjs" --keys "${BENCH_AE_KEYS:-100000}" \
    --value-bytes "${BENCH_AE_VALUE_BYTES:-512}" --diverged-pct "${BENCH_AE_DIVERGED_PCT:-1}" \
    --rounds "${BENCH_AE_ROUNDS:-3}" --json "$TMP/ae.json" >&2 || die "anti-entropy benchmark failed"
fi

say "report"
cat >"$TMP/meta.json" <<EOF
{"started":"$STARTED","command":"${USER_ENV:+$USER_ENV }bash bench/replication/run.sh",
 "cli":"${CLI#"$ROOT/"}","git":"${BENCH_CTXMESH_REV:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')}",
 "dirty":$([[ -z "${BENCH_CTXMESH_REV:-}" && "$CLI" == "$ROOT/dist/src/cli/main.js" && -n "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null)" ]] && echo true || echo false),
 "node":"$(node -v)","cpu":"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)","ncpu":$(nproc),
 "kernel":"$(uname -r)","loadgen_cpu":"$LOADGEN_CPU","server_cpu":"$BENCH_SERVER_CPU","repl_cpus":"${BENCH_REPL_CPUS:-}"}
EOF
mkdir -p "$ROOT/bench/.out"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
node "$HERE/report.mjs" "$TMP" "$ROOT/bench/.out/replication-$STAMP"
cp "$ROOT/bench/.out/replication-$STAMP.md" "$ROOT/bench/.out/replication-latest.md"
info "report saved: bench/.out/replication-$STAMP.md (and .json)"
