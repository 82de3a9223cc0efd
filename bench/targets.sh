#!/usr/bin/env bash
# The performance targets that are not throughput (docs/performance.md), in one run:
#   parse     the parser's throughput on one core (criterion, the example messages);
#   idle      the engine's resident memory with the example clinic loaded, at rest, on its
#             first start (plugins compiled) and after a restart (plugins from the cache);
#   1 MiB     the extra peak memory one 1 MiB ORU (a PDF report in OBX-5) costs, through the
#             example clinic and through one plain route, as a multiple of its size;
#   backlog   intake with 100,000 messages queued for a destination that is down, against
#             an engine like it whose queue is still short, in alternating rounds.
#
#   bench/targets.sh                   everything (about 5 minutes on 2 cores)
#   BACKLOG=30000 bench/targets.sh     a quicker backlog (the target is stated for 100,000)
#
# Ports 27675-27699 on 127.0.0.1 are used; everything it starts is stopped at the end. Resetting
# a process's peak memory (/proc/PID/clear_refs) needs Linux and permission over the process.
set -euo pipefail
cd "$(dirname "$0")/.."

backlog=${BACKLOG:-100000}
measure=${MEASURE:-20000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
count_files() { find "$1" -type f | wc -l; }

echo "== parse (criterion, one core; low, estimate, high)"
cargo bench -p courier-hl7 --bench parse -- 'parse/' 2>/dev/null |
  awk '/^parse\// { name = $1; shown = 0 }
       /thrpt:/ && !shown && NF >= 7 { gsub(/[][]/, ""); shown = 1
         print "  " name ": " $(NF-5) ", " $(NF-3) ", " $(NF-1) " " $NF }'

# ---------------------------------------------------------------------------------------------
# A 1 MiB ORU from the lab system with a PDF report embedded in OBX-5 (ED, base64).
python3 - "$work/big.hl7" <<'PY'
import base64, os, sys
body = base64.b64encode(os.urandom(786_432)).decode()  # 1 MiB of base64
segs = [
    "MSH|^~\\&|RIVERSIDE_LIS|RIVERSIDE_LAB|COURIER|RIVERSIDE|20261202090000||ORU^R01^ORU_R01|BIG0001|P|2.5.1",
    "PID|1||100234^^^RIVERSIDE^MR||Johnson^Sarah^Anne||19780412|F",
    "OBR|1|ORD9001|LAB9001|CBC^Complete blood count^L|||20261202080000|||||||||4411^Patel^Anita||||||20261202085900|||F",
    "OBX|1|ED|PDF^Report^L||^AP^PDF^Base64^" + body + "||||||F",
]
open(sys.argv[1], "w").write("\r".join(segs) + "\r")
PY
size=$(stat -c %s "$work/big.hl7")

# big PID PORT COPIES: sends the 1 MiB message to the engine PID listening on PORT, waits until
# COPIES more files are in $work/out (written by the receiving stand-ins), and prints the peak
# memory it took beyond what the engine held before.
big() {
  local pid=$1 port=$2 copies=$3 before rss peak
  before=$(count_files "$work/out")
  rss=$(kib "$pid" VmRSS)
  echo 5 >"/proc/$pid/clear_refs" # peak := current
  "$bin" send --to "127.0.0.1:$port" "$work/big.hl7" >/dev/null
  for _ in $(seq 300); do
    [ "$(count_files "$work/out")" -ge $((before + copies)) ] && break
    sleep 0.1
  done
  sleep 1
  peak=$(kib "$pid" VmHWM)
  python3 - "$size" "$rss" "$peak" <<'PY'
import sys
size, rss, peak = (int(x) for x in sys.argv[1:])
extra = (peak - rss) * 1024
print(f"    resident before {rss / 1024:.1f} MiB, peak while handling it {peak / 1024:.1f} MiB: "
      f"+{extra / 1048576:.1f} MiB = {extra / size:.1f}x its {size / 1048576:.2f} MiB; target <= 4x")
PY
}

# The example clinic, as bench/e2e.sh runs it.
clinic_stand_ins 27680
echo
echo "== idle: the example clinic loaded, 30 messages handled, at rest; target <= 30 MB"
for start in first restart; do
  start_clinic 27680
  # A few messages first, so that what is built on first use (connections, instances) is there.
  "$bin" bench --to 127.0.0.1:27680 --messages 30 >/dev/null
  sleep 2
  # Resident = anonymous (the engine's own memory) + file-backed (pages of the courier binary
  # and libraries it has run, shared and clean: the kernel can drop them and read them again).
  split="$(( $(kib "$engine" RssAnon) / 1024 )) MiB anonymous + $(( $(kib "$engine" RssFile) / 1024 )) MiB file-backed"
  if [ $start = first ]; then
    echo "  first start (plugins compiled): resident $(( $(kib "$engine" VmRSS) / 1024 )) MiB = $split"
    stop "$engine"
  else
    echo "  after a restart (plugins from the compiled cache): resident $(( $(kib "$engine" VmRSS) / 1024 )) MiB = $split"
  fi
done

echo
echo "== a 1 MiB message"
echo "  through the example clinic (three routes, four WASM steps, three deliveries):"
big "$engine" 27680 3
stop "$engine"
cat >"$work/one.toml" <<TOML
[[listener]]
name = "in"
bind = "127.0.0.1:27681"

[[destination]]
name = "emr"
address = "127.0.0.1:27686"

[[route]]
name = "all"
destinations = ["emr"]
TOML
"$bin" run "$work/one.toml" --store-dir "$work/one-store" 2>"$work/logs/one.log" & engine=$!
pids+=($engine)
wait_port 127.0.0.1 27681
"$bin" bench --to 127.0.0.1:27681 --messages 30 >/dev/null
sleep 1
echo "  through one route to one destination, no steps:"
big "$engine" 27681 1
stop "$engine"

# ---------------------------------------------------------------------------------------------
echo
echo "== backlog: intake with $backlog messages queued for a destination that is down"
# Two engines with the same config and code, each in its own store: one is given $backlog
# messages first, the other nothing. Then short intake rounds alternate between them, so that
# whatever else slows this machine during the run falls on both; the figure is the median
# round with the backlog against the median round without.
# The destination that is up acknowledges and keeps nothing: writing each message to a file
# of its own would cost it about 1 ms of CPU per message on these cores, more as its
# directory fills, and the measurement would see that, not the backlog.
"$bin" listen --port 27696 >/dev/null 2>&1 & pids+=($!)
# backlog_engine NAME PORT: starts an engine for the measurement on PORT; its PID is in $engine.
backlog_engine() {
  cat >"$work/$1.toml" <<TOML
[[listener]]
name = "in"
bind = "127.0.0.1:$2"

[[destination]]
name = "up"
address = "127.0.0.1:27696"

# Nothing listens here: every attempt fails and the queue grows.
[[destination]]
name = "down"
address = "127.0.0.1:27699"
retry = { initial = "1s", max = "10s" }

[[route]]
name = "all"
destinations = ["up", "down"]
TOML
  "$bin" run "$work/$1.toml" --store-dir "$work/$1-store" 2>"$work/logs/$1.log" & engine=$!
  pids+=($engine)
  wait_port 127.0.0.1 "$2"
}
backlog_engine backlog 27695; with=$engine
backlog_engine control 27697; without=$engine
rounds=${ROUNDS:-5}
per_round=$((measure / rounds))
# intake PID PORT: one bench run of $per_round messages at 8 connections against the engine
# PID listening on PORT; prints "msg/s cpu_us errors".
intake() {
  local before after json
  before=$(cpu "$1")
  json=$("$bin" bench --to "127.0.0.1:$2" --connections 8 --messages "$per_round" --json)
  after=$(cpu "$1")
  python3 - "$json" "$before" "$after" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
n = max(v["accepted"], 1)
print(f"{v['messages_per_second']:.0f} {(float(sys.argv[3]) - float(sys.argv[2])) * 1e6 / n:.0f} {v['errors']}")
PY
}
"$bin" bench --to 127.0.0.1:27695 --connections 8 --messages "$backlog" >/dev/null
sleep 2
results=()
for r in $(seq "$rounds"); do
  read -r rate_without cpu_without err_without < <(intake "$without" 27697)
  read -r rate_with cpu_with err_with < <(intake "$with" 27695)
  echo "  round $r of $per_round messages: without a backlog $rate_without msg/s ($cpu_without us CPU/msg, errors $err_without);" \
    "with $backlog and more queued $rate_with msg/s ($cpu_with us CPU/msg, errors $err_with)"
  results+=("$rate_without $rate_with $cpu_without $cpu_with")
done
python3 - "${results[@]}" <<'PY'
import statistics, sys
rows = [[float(x) for x in r.split()] for r in sys.argv[1:]]
med = lambda i: statistics.median(r[i] for r in rows)
print(f"  medians: {med(0):.0f} msg/s without, {med(1):.0f} with ({med(2):.0f} and {med(3):.0f} us CPU/msg);"
      f" intake with the backlog runs at {100 * med(1) / med(0):.0f}% of the rate without it; target >= 90%")
PY
