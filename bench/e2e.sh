#!/usr/bin/env bash
# The end-to-end benchmark in one command (docs/performance.md): in the same run, on loopback,
#   ceiling   `courier bench` straight at `courier listen` (the acknowledging receiver);
#   pipeline  `courier bench` at `courier run examples/clinic.toml`: after-store ACKs with
#             fsync, WASM and Rhai steps, deliveries to `courier listen` stand-ins (four
#             MLLP, one HTTP for the portal webhook);
# at 1 and 8 connections, with the server's CPU time per message and its peak memory, then
# the pipeline/ceiling ratio.
#
#   bench/e2e.sh                 20,000 messages per measurement
#   MESSAGES=5000 bench/e2e.sh   a quicker run
#
# Ports 27575-27590 on 127.0.0.1 are used; everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${MESSAGES:-20000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
# Its peak resident memory in MiB.
peak() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Waits until the stand-ins under $work/out have received nothing new for half a second;
# prints how long after the call the last file came, in seconds (0.0 when none came).
drain() {
  local start last count seen
  start=$(date +%s.%N); last=$start; seen=$(find "$work/out" -type f | wc -l)
  while :; do
    sleep 0.1
    count=$(find "$work/out" -type f | wc -l)
    if [ "$count" != "$seen" ]; then seen=$count; last=$(date +%s.%N); continue; fi
    python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $last >= 0.5 else 1)" && break
  done
  python3 -c "print(f'{$last - $start:.1f}')"
}

# measure NAME PID PORT CONNECTIONS: one bench run against PORT; prints a result line.
measure() {
  local name=$1 pid=$2 port=$3 conns=$4
  local before after json
  before=$(cpu "$pid")
  json=$("$bin" bench --to "127.0.0.1:$port" --connections "$conns" --messages "$messages" --json) || {
    echo "bench against $name failed: $json" >&2
    return 1
  }
  local drained
  # The pipeline's deliveries may trail its ACKs: its CPU counts until the stand-ins have
  # stopped receiving (no new file for half a second), and the trail is reported.
  drained=$(drain)
  after=$(cpu "$pid")
  python3 - "$name" "$conns" "$before" "$after" "$(peak "$pid")" "$json" "$drained" <<'PY'
import json, sys
name, conns, before, after, peak, raw, drained = sys.argv[1:]
v = json.loads(raw)
n = max(v["accepted"], 1)
cpu_us = (float(after) - float(before)) * 1e6 / n
print(f'{name}\t{conns}\t{v["messages_per_second"]:.0f}\t{v["latency_ms"]["p50"]:.2f}\t'
      f'{v["latency_ms"]["p99"]:.2f}\t{cpu_us:.0f}\t{peak}\t{v["errors"]}\t{drained}')
PY
}

# The ceiling: the receiver alone.
"$bin" listen --port 27575 >/dev/null 2>"$work/ceiling.log" & ceiling=$!; pids+=($ceiling)
wait_port 127.0.0.1 27575

# The pipeline: the example clinic on other ports, its store in $work.
clinic_stand_ins 27580
start_clinic 27580
idle=$(peak "$engine")

results=$work/results.tsv
{
  measure ceiling "$ceiling" 27575 1
  measure pipeline "$engine" 27580 1
  measure ceiling "$ceiling" 27575 8
  measure pipeline "$engine" 27580 8
} | tee "$results" >/dev/null

echo
echo "courier e2e benchmark: $messages messages per row, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-9s %5s %11s %9s %9s %12s %9s %7s %9s\n' what conns "msg/s" "p50 ms" "p99 ms" "cpu us/msg" "peak MiB" errors "trail s"
while IFS=$'\t' read -r name conns rate p50 p99 cpu mem errs trail; do
  printf '%-9s %5s %11s %9s %9s %12s %9s %7s %9s\n' "$name" "$conns" "$rate" "$p50" "$p99" "$cpu" "$mem" "$errs" "$trail"
done <"$results"
echo "(cpu us/msg counts until the deliveries are done; trail s: how long they ran on after the last ACK)"
python3 - "$results" "$idle" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
rate = {(r[0], r[1]): float(r[2]) for r in rows}
for c in ("1", "8"):
    print(f"pipeline/ceiling at {c} connection(s): {100 * rate[('pipeline', c)] / rate[('ceiling', c)]:.1f}%")
print(f"engine memory right after start (clinic loaded): {sys.argv[2]} MiB peak")
PY
