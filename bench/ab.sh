#!/usr/bin/env bash
# Two builds of courier compared on the example clinic, on a machine whose speed drifts: both
# clinics run side by side (each with its own stand-ins and store), and rounds of `courier
# bench` go to one, then the other, so that whatever slows the machine during a round falls on
# both. Per round it prints each engine's CPU per message, messages/s and ACK latency p50;
# then the median of the per-round ratios B/A, with their range.
#
#   bench/ab.sh OLD_COURIER NEW_COURIER          8 rounds of 3,000 messages, 8 connections
#   ROUNDS=12 MESSAGES=5000 CONNECTIONS=32 bench/ab.sh A B
#   PIPELINE=one-route ROUNDS=20 MESSAGES=6000 bench/ab.sh A B
#
# PIPELINE=one-route compares the one-route pipeline of bench/e2e.sh (bench/lib.sh, one_route)
# instead of the clinic: less work beside the engine's on the same cores, so less noise. Each
# round also gives the store's writer thread's CPU per message, and its median ratio.
#
# Runs minutes apart do not compare here: the same build measured 590 and 1,000 us/msg within
# ten minutes (docs/performance.md). Ports 27800-27835 on 127.0.0.1 are used; everything it
# starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || { echo "usage: bench/ab.sh COURIER_A COURIER_B" >&2; exit 2; }
builds=("$(realpath "$1")" "$(realpath "$2")")
rounds=${ROUNDS:-8}
messages=${MESSAGES:-3000}
connections=${CONNECTIONS:-8}
# shellcheck source=bench/lib.sh
. bench/lib.sh
generator=$bin
root=$work

pipeline=${PIPELINE:-clinic}
case "$pipeline" in
  clinic | one-route) ;;
  *) echo "PIPELINE is clinic or one-route, not $pipeline" >&2; exit 2 ;;
esac

engines=()
bases=(27800 27820)
for i in 0 1; do
  work=$root/$i; mkdir -p "$work"
  bin=${builds[$i]}
  if [ "$pipeline" = clinic ]; then
    clinic_stand_ins "${bases[$i]}" log
    start_clinic "${bases[$i]}"
  else
    one_route "${bases[$i]}"
    start_one_route "${bases[$i]}"
  fi
  engines+=("$engine")
  # Warm up: plugins compiled, store and caches in use.
  "$generator" bench --to "127.0.0.1:${bases[$i]}" --connections "$connections" \
    --messages 2000 >/dev/null
done
work=$root

for round in $(seq "$rounds"); do
  line=$round
  for i in 0 1; do
    before=$(cpu "${engines[$i]}")
    writer_before=$(writer_cpu "${engines[$i]}")
    json=$("$generator" bench --to "127.0.0.1:${bases[$i]}" --connections "$connections" \
      --messages "$messages" --json)
    # Deliveries trail the last ACK a little; their CPU belongs to this round.
    sleep 1
    after=$(cpu "${engines[$i]}")
    writer_after=$(writer_cpu "${engines[$i]}")
    line+=$(python3 - "$before" "$after" "$writer_before" "$writer_after" "$messages" "$json" <<'PY'
import json, sys
before, after, w0, w1, n, raw = sys.argv[1:]
v = json.loads(raw)
print(f'\t{(float(after) - float(before)) * 1e6 / int(n):.0f}\t{v["messages_per_second"]:.0f}'
      f'\t{v["latency_ms"]["p50"]:.2f}\t{v["errors"]}'
      f'\t{(float(w1) - float(w0)) * 1e6 / int(n):.0f}')
PY
)
  done
  echo "$line"
done >"$root/rounds"

echo
echo "courier A/B: $messages messages per round, $connections connections, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "A: ${builds[0]}"
echo "B: ${builds[1]}"
python3 - "$root/rounds" "$pipeline" <<'PY'
import statistics, sys
# Per row: round, then for A and for B: us/msg, msg/s, p50, errors, writer us/msg.
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
print(f'pipeline: {sys.argv[2]}')
print(f'{"round":>5} {"A us/msg":>9} {"A writer":>9} {"A msg/s":>8} {"A p50":>6} '
      f'{"B us/msg":>9} {"B writer":>9} {"B msg/s":>8} {"B p50":>6} {"B/A cpu":>8} {"writer":>7}')
ratios, writer = [], []
for r in rows:
    a, b, wa, wb = float(r[1]), float(r[6]), float(r[5]), float(r[10])
    ratios.append(b / a)
    writer.append(wb / wa if wa else float("nan"))
    print(f'{r[0]:>5} {r[1]:>9} {r[5]:>9} {r[2]:>8} {r[3]:>6} {r[6]:>9} {r[10]:>9} {r[7]:>8} '
          f'{r[8]:>6} {b / a:>8.3f} {writer[-1]:>7.3f}')
errors = sum(int(r[4]) + int(r[9]) for r in rows)
col = lambda k: statistics.median(float(r[k]) for r in rows)
print(f'medians: A {col(1):.0f} us/msg (writer {col(5):.0f}), {col(2):.0f} msg/s, '
      f'p50 {col(3):.2f} ms; B {col(6):.0f} us/msg (writer {col(10):.0f}), {col(7):.0f} msg/s, '
      f'p50 {col(8):.2f} ms')
print(f'CPU per message B/A: median {statistics.median(ratios):.3f} '
      f'(rounds {min(ratios):.3f}-{max(ratios):.3f}); writer thread {statistics.median(writer):.3f} '
      f'({min(writer):.3f}-{max(writer):.3f}); errors {errors}')
PY
