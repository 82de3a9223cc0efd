#!/usr/bin/env bash
# Runs the example clinic on this machine: builds Courier and its example plugins, starts
# stand-in EMR (2576), LIS (2577), billing (2578) and research (2579) receivers, a stand-in
# patient-portal webhook (HTTP, 2580) and the engine on 2575 with examples/clinic.toml, then
# sends the four example messages through it, drops the hematology analyzer's result file in
# examples/data/lab-drop/, and shows where each message landed. Ctrl-C stops everything.
#
#   examples/clinic.sh          build, run, send the examples, keep serving until Ctrl-C
#   examples/clinic.sh --once   the same, but stop after the examples are delivered
#
# COURIER_BIN=path skips the build (the tests use it); received messages and the engine's
# message store are written under examples/data/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
[ "${1:-}" = "--once" ] && once=true

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml \
  --target-dir target/wasm-plugins
if [ -z "${COURIER_BIN:-}" ]; then
  cargo build --release --bin courier
  COURIER_BIN=target/release/courier
fi
bin=$COURIER_BIN
data=${COURIER_DATA:-examples/data}
rm -rf "$data"
mkdir -p "$data/emr" "$data/lis" "$data/billing" "$data/research" "$data/portal"
# clinic.toml watches examples/data/lab-drop/ (relative to itself).
drop=examples/data/lab-drop
rm -rf "$drop"
mkdir -p "$drop"

# The admin API and dashboard need a token: keep the caller's, or make one for this run.
if [ -z "${COURIER_ADMIN_TOKEN:-}" ]; then
  COURIER_ADMIN_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
fi
export COURIER_ADMIN_TOKEN

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin" listen --port 2576 --out "$data/emr" >"$data/emr.log" 2>&1 & pids+=($!)
"$bin" listen --port 2577 --out "$data/lis" >"$data/lis.log" 2>&1 & pids+=($!)
"$bin" listen --port 2578 --out "$data/billing" >"$data/billing.log" 2>&1 & pids+=($!)
"$bin" listen --port 2579 --out "$data/research" >"$data/research.log" 2>&1 & pids+=($!)
"$bin" listen --http --port 2580 --out "$data/portal" >"$data/portal.log" 2>&1 & pids+=($!)
"$bin" run examples/clinic.toml --store-dir "$data/store" > >(tee "$data/engine.log") 2>&1 & pids+=($!)

# Wait for the engine to listen (up to 30 s).
for _ in $(seq 300); do
  grep -q "listening" "$data/engine.log" 2>/dev/null && break
  sleep 0.1
done

echo
echo "== Sending the example messages to the engine (127.0.0.1:2575)"
"$bin" send examples/messages/adt_a04_sarah.hl7 examples/messages/orm_o01_labs.hl7 \
  examples/messages/oru_r01_results.hl7 examples/messages/adt_a01_admit.hl7 --to 127.0.0.1:2575

echo
echo "== The hematology analyzer drops a run of two results in $drop/"
# Written under a hidden name and renamed, as a well-behaved instrument does.
cp examples/lab-drop/hematology_run.hl7 "$drop/.hematology_run.hl7.part"
mv "$drop/.hematology_run.hl7.part" "$drop/hematology_run.hl7"

# Wait for the sixteen deliveries: A04, ORU, A01 and the two dropped ORUs to the EMR; ORM to
# the LIS; A04, A01 to billing; A04, ORU, A01 and the dropped ORUs de-identified to research;
# the three ORUs to the portal.
all="$data/emr $data/lis $data/billing $data/research $data/portal"
for _ in $(seq 300); do
  n=$(find $all -name '*.hl7' | wc -l)
  [ "$n" -ge 16 ] && break
  sleep 0.1
done
echo
echo "== Delivered"
for sys in emr lis billing research portal; do
  echo "$sys:"
  for f in "$data/$sys"/*.hl7; do
    [ -e "$f" ] || continue
    echo "  $(basename "$f")  $("$bin" parse "$f" --path MSH-9 --path PID-3 --path PID-5 | cut -f2 | paste -sd' ')"
  done
done

if $once; then
  n=$(find $all -name '*.hl7' | wc -l)
  [ "$n" -eq 16 ] || { echo "expected 16 deliveries, found $n" >&2; exit 1; }
  [ -e "$drop/processed/hematology_run.hl7" ] || { echo "the dropped file was not moved to processed/" >&2; exit 1; }
  exit 0
fi
echo
echo "Dashboard: http://127.0.0.1:8575/  (token: $COURIER_ADMIN_TOKEN)"
echo "The clinic is running. Send more with:"
echo "  $bin send examples/messages/*.hl7 --to 127.0.0.1:2575"
echo "Run the route tests (examples/tests/) with:"
echo "  $bin test examples/clinic.toml"
echo "Ctrl-C to stop."
wait
