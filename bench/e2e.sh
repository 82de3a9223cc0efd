#!/usr/bin/env bash
# The end-to-end benchmark in one command (docs/performance.md): in the same run, on loopback,
#   ceiling   `courier bench` straight at `courier listen` (the acknowledging receiver);
#   pipeline  `courier bench` at `courier run examples/clinic.toml`: after-store ACKs with
#             fsync, WASM and Rhai steps, deliveries to `courier listen` stand-ins (four
#             MLLP, one HTTP for the portal webhook);
#   one-route `courier bench` at `courier run` on one route: after-store ACKs with fsync, one
#             WASM step and one Rhai step, one MLLP stand-in;
# at 1 and 8 connections, with the server's CPU time per message and its peak memory, then
# each pipeline/ceiling ratio, and what the engine's own MLLP exchanges cost at the least.
#
#   bench/e2e.sh                 20,000 messages per measurement
#   MESSAGES=5000 bench/e2e.sh   a quicker run
#
# Ports 27575-27593 on 127.0.0.1 are used; everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${MESSAGES:-20000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
# Its peak resident memory in MiB.
peak() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Bytes the stand-ins have logged so far.
received() { find "$work"/out* -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

# Waits until the stand-ins under $work/out* have received nothing new for half a second;
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

# CPU seconds the processes given have used so far.
cpu_of() {
  local total=0 p
  for p in "$@"; do total=$(python3 -c "print($total + $(cpu "$p"))"); done
  echo "$total"
}

# Messages the stand-in logs given have received so far: `courier listen` heads each one with
# a line `--- #N`.
delivered() { cat "$@" | grep -c '^--- #' || true; }

# measure NAME PID PORT CONNECTIONS [LOG_DIR STAND-IN_PID...]: one bench run against PORT;
# prints a result line. Beside the server's CPU it counts the others' on the same cores: the
# load generator's (bash's `time`) and a pipeline's stand-ins', whose logs in LOG_DIR give its
# deliveries per message.
measure() {
  local name=$1 pid=$2 port=$3 conns=$4 dir=${5:-}
  shift 4; [ $# -gt 0 ] && shift
  local before after json others_before others_after sent_before=0 sent_after=0
  before=$(cpu "$pid")
  others_before=$(cpu_of "$@")
  [ -n "$dir" ] && sent_before=$(delivered "$dir"/*.log)
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
  others_after=$(cpu_of "$@")
  [ -n "$dir" ] && sent_after=$(delivered "$dir"/*.log)
  python3 - "$name" "$conns" "$before" "$after" "$(peak "$pid")" "$json" "$drained" \
    "$(tail -1 "$work/bench.time")" "$others_before" "$others_after" \
    "$((sent_after - sent_before))" <<'PY'
import json, sys
name, conns, before, after, peak, raw, drained, gen, o_before, o_after, sent = sys.argv[1:]
v = json.loads(raw)
n = max(v["accepted"], 1)
cpu_us = (float(after) - float(before)) * 1e6 / n
user, system = (float(x) for x in gen.split())
others_us = (user + system + float(o_after) - float(o_before)) * 1e6 / n
print(f'{name}\t{conns}\t{v["messages_per_second"]:.0f}\t{v["latency_ms"]["p50"]:.2f}\t'
      f'{v["latency_ms"]["p99"]:.2f}\t{cpu_us:.0f}\t{others_us:.0f}\t{peak}\t{v["errors"]}\t'
      f'{drained}\t{int(sent) / n:.2f}')
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
clinic=$engine
idle=$(peak "$clinic")

# One route (bench/lib.sh, one_route): the lightest pipeline as the issue describes it.
one_route 27592
start_one_route 27592
one=$engine
wait_port 127.0.0.1 27593
# Warm up as the clinic was: its plugin compiled, its store in use.
"$bin" bench --to 127.0.0.1:27592 --messages 300 >/dev/null

results=$work/results.tsv
{
  measure ceiling "$ceiling" 27575 1
  measure pipeline "$clinic" 27580 1 "$work/out" "${standins[@]}"
  measure one-route "$one" 27592 1 "$work/out-one" "$one_standin"
  measure ceiling "$ceiling" 27575 8
  measure pipeline "$clinic" 27580 8 "$work/out" "${standins[@]}"
  measure one-route "$one" 27592 8 "$work/out-one" "$one_standin"
} | tee "$results" >/dev/null

echo
echo "courier e2e benchmark: $messages messages per row, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-9s %5s %9s %8s %8s %11s %13s %9s %7s %8s %8s\n' what conns "msg/s" "p50 ms" "p99 ms" \
  "cpu us/msg" "others us/msg" "peak MiB" errors "trail s" "out/msg"
while IFS=$'\t' read -r name conns rate p50 p99 cpu others mem errs trail out; do
  printf '%-9s %5s %9s %8s %8s %11s %13s %9s %7s %8s %8s\n' "$name" "$conns" "$rate" "$p50" \
    "$p99" "$cpu" "$others" "$mem" "$errs" "$trail" "$out"
done <"$results"
echo "(cpu us/msg: the server's, until the deliveries are done; others: the load generator's and"
echo " the pipeline's stand-ins' on the same cores; trail s: how long deliveries ran on after the"
echo " last ACK; out/msg: messages the stand-ins received per message sent)"
python3 - "$results" "$idle" "$(nproc)" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
row = {(r[0], r[1]): r for r in rows}
for name in ("pipeline", "one-route"):
    for c in ("1", "8"):
        ratio = float(row[(name, c)][2]) / float(row[("ceiling", c)][2])
        print(f"{name}/ceiling at {c} connection(s): {100 * ratio:.1f}%")
print(f"engine memory right after start (clinic loaded): {sys.argv[2]} MiB peak")
# What 25% of the ceiling at 8 connections leaves the engine: every process shares the cores.
# And the least the engine's own MLLP work can cost, priced by the ceiling rows of this run:
# taking a message in and answering it is at least what `courier listen` spends per message,
# and each delivery (framing, sending, reading and checking the ACK) at least what the load
# generator spends per message it sends.
cores = int(sys.argv[3])
goal = 0.25 * float(row[("ceiling", "8")][2])
budget = cores * 1e6 / goal
intake = float(row[("ceiling", "8")][5])
send = float(row[("ceiling", "8")][6])
print(f"at 25% of the ceiling at 8 connections ({goal:.0f} msg/s), {cores} cores give "
      f"{budget:.0f} us of CPU per message to every process together:")
for name in ("pipeline", "one-route"):
    r = row[(name, "8")]
    others, engine, out = float(r[6]), float(r[5]), float(r[10])
    floor = intake + out * send
    left = budget - others
    if left > 0:
        verdict = f"which leaves {left:.0f} us for the engine; it took {engine:.0f}"
    else:
        verdict = (f"more than all of it: no engine reaches 25% here (this one took "
                   f"{engine:.0f})")
    print(f"  {name}: the load generator and stand-ins took {others:.0f} us per message, "
          f"{verdict}. Its MLLP exchanges alone cost at least {floor:.0f} us ({intake:.0f} to "
          f"take a message in, {out:.2f} deliveries x {send:.0f})")
PY
