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

# Bytes the stand-ins have logged so far.
received() { find "$work/out" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

# Waits until the stand-ins under $work/out have received nothing new for half a second;
# prints how long after the call the last message came, in seconds (0.0 when none came).
drain() {
  local start last count seen
  start=$(date +%s.%N); last=$start; seen=$(received)
  while :; do
    sleep 0.1
    count=$(received)
    if [ "$count" != "$seen" ]; then seen=$count; last=$(date +%s.%N); continue; fi
    python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $last >= 0.5 else 1)" && break
  done
  python3 -c "print(f'{$last - $start:.1f}')"
}

# CPU seconds the stand-ins (PIDs in $standins) have used so far.
standins_cpu() {
  local total=0 p
  for p in "${standins[@]}"; do total=$(python3 -c "print($total + $(cpu "$p"))"); done
  echo "$total"
}

# measure NAME PID PORT CONNECTIONS: one bench run against PORT; prints a result line. Beside
# the server's CPU it counts the others' on the same cores: the load generator's (bash's
# `time`) and, for the pipeline, the stand-ins'.
measure() {
  local name=$1 pid=$2 port=$3 conns=$4
  local before after json others_before others_after
  before=$(cpu "$pid")
  others_before=0; [ "$name" = pipeline ] && others_before=$(standins_cpu)
  json=$( { TIMEFORMAT='%3U %3S'; time "$bin" bench --to "127.0.0.1:$port" --connections "$conns" \
            --messages "$messages" --json; } 2>"$work/bench.time") || {
    echo "bench against $name failed: $json $(cat "$work/bench.time")" >&2
    return 1
  }
  local drained
  # The pipeline's deliveries may trail its ACKs: its CPU counts until the stand-ins have
  # stopped receiving (no new file for half a second), and the trail is reported.
  drained=$(drain)
  after=$(cpu "$pid")
  others_after=0; [ "$name" = pipeline ] && others_after=$(standins_cpu)
  python3 - "$name" "$conns" "$before" "$after" "$(peak "$pid")" "$json" "$drained" \
    "$(tail -1 "$work/bench.time")" "$others_before" "$others_after" <<'PY'
import json, sys
name, conns, before, after, peak, raw, drained, gen, o_before, o_after = sys.argv[1:]
v = json.loads(raw)
n = max(v["accepted"], 1)
cpu_us = (float(after) - float(before)) * 1e6 / n
user, system = (float(x) for x in gen.split())
others_us = (user + system + float(o_after) - float(o_before)) * 1e6 / n
print(f'{name}\t{conns}\t{v["messages_per_second"]:.0f}\t{v["latency_ms"]["p50"]:.2f}\t'
      f'{v["latency_ms"]["p99"]:.2f}\t{cpu_us:.0f}\t{others_us:.0f}\t{peak}\t{v["errors"]}\t'
      f'{drained}')
PY
}

# The ceiling: the receiver alone.
"$bin" listen --port 27575 >/dev/null 2>"$work/ceiling.log" & ceiling=$!; pids+=($ceiling)
wait_port 127.0.0.1 27575

# The pipeline: the example clinic on other ports, its store in $work.
first=${#pids[@]}
clinic_stand_ins 27580 log
standins=("${pids[@]:first}")
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
printf '%-9s %5s %9s %8s %8s %11s %13s %9s %7s %8s\n' what conns "msg/s" "p50 ms" "p99 ms" \
  "cpu us/msg" "others us/msg" "peak MiB" errors "trail s"
while IFS=$'\t' read -r name conns rate p50 p99 cpu others mem errs trail; do
  printf '%-9s %5s %9s %8s %8s %11s %13s %9s %7s %8s\n' "$name" "$conns" "$rate" "$p50" "$p99" \
    "$cpu" "$others" "$mem" "$errs" "$trail"
done <"$results"
echo "(cpu us/msg: the server's, until the deliveries are done; others: the load generator's and,"
echo " for the pipeline, the stand-ins' on the same cores; trail s: how long deliveries ran on"
echo " after the last ACK)"
python3 - "$results" "$idle" "$(nproc)" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
row = {(r[0], r[1]): r for r in rows}
for c in ("1", "8"):
    ratio = float(row[("pipeline", c)][2]) / float(row[("ceiling", c)][2])
    print(f"pipeline/ceiling at {c} connection(s): {100 * ratio:.1f}%")
print(f"engine memory right after start (clinic loaded): {sys.argv[2]} MiB peak")
# What 25% of the ceiling at 8 connections leaves the engine: every process shares the cores.
cores = int(sys.argv[3])
goal = 0.25 * float(row[("ceiling", "8")][2])
budget = cores * 1e6 / goal
others = float(row[("pipeline", "8")][6])
engine = float(row[("pipeline", "8")][5])
print(f"at 25% of the ceiling at 8 connections ({goal:.0f} msg/s), {cores} cores give "
      f"{budget:.0f} us of CPU per message to every process together; the load generator and "
      f"stand-ins took {others:.0f} us per pipeline message here, which leaves "
      f"{budget - others:.0f} us for the engine (it took {engine:.0f})")
PY
