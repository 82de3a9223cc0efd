#!/usr/bin/env bash
# Where the example clinic's engine spends per message, split at the store's writer thread:
# the one thread every message's commits, claims and outcomes go through, so its CPU per
# message bounds the engine's throughput however many cores the machine has. Per round it
# prints msg/s, CPU per message (the whole engine, the writer thread, the rest), store commits
# and write requests per message, bytes written to storage per message (/proc/PID/io) and how
# much the store grew per message (pages in use). Then, when `perf` can place a probe on
# libc's malloc (root), how many malloc calls a message costs: a count, not a timing, so it
# is the same from run to run.
#
#   bench/store.sh                               3 rounds of 10,000 messages, 8 connections
#   ROUNDS=5 MEASURE=5000 bench/store.sh
#   COURIER_BIN=/tmp/old/courier bench/store.sh  another build of courier, to compare
#
# Ports 27750-27765 on 127.0.0.1 are used; everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
measure=${MEASURE:-10000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bin=${COURIER_BIN:-$bin}
admin=27765

clinic_stand_ins 27750 log
sed -i "s/127.0.0.1:0\"/127.0.0.1:$admin\"/" "$work/clinic.toml"
start_clinic 27750
"$bin" bench --to 127.0.0.1:27750 --connections 8 --messages 2000 >/dev/null
sleep 1

# CPU seconds of the engine's threads whose name starts with $1.
threads_cpu() {
  local t total=0
  for t in /proc/"$engine"/task/*; do
    case "$(cat "$t/comm")" in
      "$1"*) total=$(awk -v hz="$(getconf CLK_TCK)" -v s="$total" '{ printf "%.3f", s + ($14 + $15) / hz }' "$t/stat") ;;
    esac
  done
  echo "$total"
}
# engine CPU, writer CPU, commits, write requests, bytes written, store bytes in use.
snapshot() {
  python3 - "$admin" "$work/store/courier.db" <<'PY'
import sqlite3, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/metrics",
                             headers={"Authorization": "Bearer bench-token-0123456789"})
metrics = {}
for line in urllib.request.urlopen(req).read().decode().splitlines():
    if line and not line.startswith("#"):
        name, _, value = line.rpartition(" ")
        metrics[name] = float(value)
db = sqlite3.connect(f"file:{sys.argv[2]}?mode=ro", uri=True)
(used,) = db.execute("SELECT (page_count - freelist_count) * page_size "
                     "FROM pragma_page_count, pragma_freelist_count, pragma_page_size").fetchone()
print(int(metrics.get("courier_store_commits_total", 0)),
      int(metrics.get("courier_store_writes_total", 0)), used)
PY
}
results=$work/store.tsv
for r in $(seq "$rounds"); do
  e0=$(cpu "$engine"); w0=$(threads_cpu courier-store-w)
  read -r c0 j0 s0 < <(snapshot); b0=$(awk '$1 == "write_bytes:" { print $2 }' "/proc/$engine/io")
  json=$("$bin" bench --to 127.0.0.1:27750 --connections 8 --messages "$measure" --json)
  sleep 2 # the deliveries trail the ACKs
  e1=$(cpu "$engine"); w1=$(threads_cpu courier-store-w)
  read -r c1 j1 s1 < <(snapshot); b1=$(awk '$1 == "write_bytes:" { print $2 }' "/proc/$engine/io")
  python3 - "$json" "$e0" "$e1" "$w0" "$w1" "$c0" "$c1" "$j0" "$j1" "$b0" "$b1" "$s0" "$s1" <<'PY' | tee -a "$results"
import json, sys
v = json.loads(sys.argv[1])
e0, e1, w0, w1, c0, c1, j0, j1, b0, b1, s0, s1 = (float(x) for x in sys.argv[2:])
n = max(v["accepted"], 1)
print(f'{v["messages_per_second"]:.0f}\t{(e1 - e0) * 1e6 / n:.0f}\t{(w1 - w0) * 1e6 / n:.0f}\t'
      f'{(e1 - e0 - w1 + w0) * 1e6 / n:.0f}\t{(c1 - c0) / n:.3f}\t{(j1 - j0) / n:.2f}\t'
      f'{(b1 - b0) / 1024 / n:.1f}\t{(s1 - s0) / n:.0f}\t{v["errors"]}')
PY
done

echo
echo "courier store benchmark: example clinic, 8 connections, $rounds rounds of $measure messages, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
python3 - "$results" <<'PY'
import statistics, sys
rows = [[float(x) for x in l.split("\t")] for l in open(sys.argv[1])]
names = ["msg/s", "engine us/msg", "writer us/msg", "others us/msg", "commits/msg",
         "writes/msg", "KiB written/msg", "store B/msg", "errors"]
print("  ".join(f"{n:>15}" for n in names))
for r in rows:
    print("  ".join(f"{x:>15g}" for x in r))
print("  ".join(f"{statistics.median(c):>15g}" for c in zip(*rows)), "(medians)")
PY
echo "(writer: the store's writer thread; others: every other thread of the engine)"

# Allocations per message, where perf can count calls to libc's malloc.
# A probe this script adds is removed again at the end; one that was there is left.
libc=$(ldd "$bin" | awk '/libc\.so/ { print $3 }')
added=
if command -v perf >/dev/null && [ -n "$libc" ] \
   && { perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc' \
        || { perf probe -q -x "$libc" --add malloc >/dev/null 2>&1 && added=1; }; }; then
  count=3000
  perf stat -x, -e probe_libc:malloc -p "$engine" -o "$work/malloc.txt" &
  counter=$!
  sleep 0.5
  "$bin" bench --to 127.0.0.1:27750 --connections 8 --messages "$count" >/dev/null
  sleep 2
  kill -INT "$counter"; wait "$counter" 2>/dev/null || true
  awk -F, -v n="$count" '/probe_libc:malloc/ { printf "malloc calls per message: %.0f (over %d messages)\n", $1 / n, n }' "$work/malloc.txt"
  if [ -n "$added" ]; then perf probe -q -d probe_libc:malloc >/dev/null 2>&1 || true; fi
else
  echo "malloc calls per message: skipped (needs perf and root for a probe on libc's malloc)"
fi
