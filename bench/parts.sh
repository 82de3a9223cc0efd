#!/usr/bin/env bash
# What each part of the one-route pipeline (bench/e2e.sh) costs the engine, found by taking it
# out: five engines of one build run side by side, each on its own variant of the route, with
# its own stand-in and store, and rounds of `courier bench` go to each in turn (then to
# `courier listen`, the ceiling), so that whatever slows the machine during a round falls on
# all of them.
#
#   full      the one-route pipeline: after-store ACK with fsync, the WASM step, the Rhai step
#   wasm      the WASM step only
#   rhai      the Rhai step only
#   no-steps  neither step: intake, the store, the delivery
#   no-fsync  full, with `[store] fsync = false`
#   ceiling   `courier listen` loaded directly
#
# Per variant it prints the medians of the engine's CPU per message, its store writer
# thread's, messages/s and the others' CPU per message (the load generator's and the
# stand-in's); then each part's cost, as the median over the rounds of the difference between
# two variants measured in the same round; then what 25% of the ceiling leaves each variant
# on these cores once the others have taken theirs (as bench/e2e.sh reckons it).
#
#   bench/parts.sh                          10 rounds of 6,000 messages, 8 connections
#   ROUNDS=20 MESSAGES=4000 CONNECTIONS=1 bench/parts.sh
#
# Ports 27900-27941 and 27960 on 127.0.0.1 are used; everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-10}
messages=${MESSAGES:-6000}
connections=${CONNECTIONS:-8}
# shellcheck source=bench/lib.sh
. bench/lib.sh
root=$work

names=(full wasm rhai no-steps no-fsync ceiling)
steps=("wasm rhai" "wasm" "rhai" "" "wasm rhai")
stores=("" "" "" "" "fsync = false")
servers=(); others=(); ports=()
for i in 0 1 2 3 4; do
  work=$root/$i; mkdir -p "$work"
  base=$((27900 + 10 * i))
  one_route "$base" "${steps[$i]}" "${stores[$i]}"
  start_one_route "$base"
  servers+=("$engine"); others+=("$one_standin"); ports+=("$base")
  # Warm up: the plugin compiled, the store and caches in use.
  "$bin" bench --to "127.0.0.1:$base" --connections "$connections" --messages 2000 >/dev/null
done
work=$root
"$bin" listen --port 27960 >/dev/null 2>"$work/ceiling.log" & ceiling=$!; pids+=($ceiling)
wait_port 127.0.0.1 27960
servers+=("$ceiling"); others+=(""); ports+=(27960)

for round in $(seq "$rounds"); do
  line=$round
  for i in 0 1 2 3 4 5; do
    server=${servers[$i]}; other=${others[$i]}
    before=$(cpu "$server"); writer_before=$(writer_cpu "$server")
    other_before=0; [ -n "$other" ] && other_before=$(cpu "$other")
    json=$( { TIMEFORMAT='%3U %3S'; time "$bin" bench --to "127.0.0.1:${ports[$i]}" \
              --connections "$connections" --messages "$messages" --json; } 2>"$work/bench.time")
    # Deliveries trail the last ACK a little; their CPU belongs to this round.
    sleep 1
    after=$(cpu "$server"); writer_after=$(writer_cpu "$server")
    other_after=0; [ -n "$other" ] && other_after=$(cpu "$other")
    line+=$(python3 - "$before" "$after" "$writer_before" "$writer_after" "$other_before" \
      "$other_after" "$(tail -1 "$work/bench.time")" "$messages" "$json" <<'PY'
import json, sys
b, a, wb, wa, ob, oa, gen, n, raw = sys.argv[1:]
v = json.loads(raw)
if v["errors"]:
    sys.exit(f"courier bench counted errors: {v['errors']}")
n = int(n)
user, system = (float(x) for x in gen.split())
us = lambda x: x * 1e6 / n
print(f'\t{us(float(a) - float(b)):.1f}\t{us(float(wa) - float(wb)):.1f}'
      f'\t{v["messages_per_second"]:.0f}\t{us(user + system + float(oa) - float(ob)):.1f}')
PY
)
  done
  echo "$line"
done >"$root/rounds"

echo
echo "courier parts of the one-route pipeline: $rounds rounds of $messages messages, $connections connections, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
python3 - "$root/rounds" "$(nproc)" "${names[@]}" <<'PY'
import statistics as st, sys
rows = [[float(x) for x in line.split("\t")] for line in open(sys.argv[1])]
cores = int(sys.argv[2])
names = sys.argv[3:]
# Per row: round, then per variant: engine us/msg, writer us/msg, msg/s, others us/msg.
col = lambda v, k: [r[1 + 4 * v + k] for r in rows]
med = lambda v, k: st.median(col(v, k))
print(f'{"variant":<9} {"engine us/msg":>13} {"writer us/msg":>13} {"msg/s":>7} {"others us/msg":>13}')
for v, name in enumerate(names):
    writer = f'{med(v, 1):13.1f}' if name != "ceiling" else f'{"-":>13}'
    print(f'{name:<9} {med(v, 0):13.1f} {writer} {med(v, 2):7.0f} {med(v, 3):13.1f}')
ix = {n: i for i, n in enumerate(names)}
def part(label, plus, minus, k=0):
    d = [sum(r[1 + 4 * ix[p] + k] for p in plus) - sum(r[1 + 4 * ix[m] + k] for m in minus)
         for r in rows]
    return f'{label:<45} {st.median(d):6.1f} us/msg ({min(d):.1f} to {max(d):.1f})'
print()
print('each part, the median over the rounds of a difference measured within one round:')
print(part("the WASM step (full - rhai)", ["full"], ["rhai"]))
print(part("the Rhai step (full - wasm)", ["full"], ["wasm"]))
print(part("having steps (wasm + rhai - full - no-steps)", ["wasm", "rhai"], ["full", "no-steps"]))
print(part("  of it, on the writer thread", ["wasm", "rhai"], ["full", "no-steps"], 1))
print(part("the fsync per commit (full - no-fsync)", ["full"], ["no-fsync"]))
print(part("  of it, on the writer thread", ["full"], ["no-fsync"], 1))
print(part("no-steps over the ceiling's receiver", ["no-steps"], ["ceiling"]))
ceiling = med(ix["ceiling"], 2)
budget = cores * 1e6 / (0.25 * ceiling)
print()
print(f'25% of the ceiling ({ceiling:.0f} msg/s) is {0.25 * ceiling:.0f} msg/s: {cores} cores give '
      f'every process together {budget:.0f} us per message. Left for the engine:')
for v, name in enumerate(names[:-1]):
    left = budget - med(v, 3)
    engine = med(v, 0)
    ratio = f'{engine / left:.2f}x that' if left > 0 else 'nothing'
    print(f'  {name:<9} {left:6.0f} us; it took {engine:.0f} ({ratio})')
PY
