# Shared by the bench scripts (sourced, from the repository's root): builds the release binary
# and the example plugins, makes a work directory that is removed at the end with everything
# started in it, and starts the example clinic with its stand-in receivers on other ports.

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --locked --bin courier
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml \
  --target-dir target/wasm-plugins
bin=$PWD/target/release/courier
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() { # host port
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1:$2" >&2
  return 1
}

# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# CPU seconds (user + system) of a process's store writer thread so far; 0 when it has none
# (`courier listen`).
writer_cpu() {
  local t
  for t in /proc/"$1"/task/*; do
    if [ "$(cat "$t/comm")" = courier-store-w ]; then
      awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "$t/stat"
      return
    fi
  done
  echo 0
}
# A /proc/PID/status figure in KiB: kib PID VmRSS.
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
# Stops a process and waits for it.
stop() { kill -TERM "$1"; wait "$1" 2>/dev/null || true; }

# clinic_stand_ins BASE [log]: `courier listen` stand-ins for the example clinic's receivers on
# 127.0.0.1:BASE+6..BASE+9 (EMR, LIS, billing, research; MLLP) and BASE+10 (the portal's
# webhook, HTTP), writing what they get under $work/out/: a file per message, or with `log`
# one log per stand-in ($work/out/NAME.log, what `courier listen` prints). A file per message
# costs the stand-in about 1 ms of CPU here (creating a file on this disk) against 36 us
# for the rest of its work, on the cores the engine runs on; the throughput run uses `log`.
# Also $work/clinic.toml, the example clinic listening on BASE+0 and sending to them, its
# admin server on a free port.
clinic_stand_ins() {
  local base=$1 mode=${2:-files} i name
  mkdir -p "$work/out"
  for i in 6 7 8 9 10; do
    name=dest$i; [ $i = 10 ] && name=portal
    local args=(listen --port $((base + i)))
    [ $i = 10 ] && args+=(--http)
    if [ "$mode" = log ]; then
      "$bin" "${args[@]}" >"$work/out/$name.log" 2>&1 & pids+=($!)
    else
      mkdir -p "$work/out/$name"
      "$bin" "${args[@]}" --out "$work/out/$name" >/dev/null 2>&1 & pids+=($!)
    fi
  done
  sed -e "s/127.0.0.1:2575/127.0.0.1:$base/" \
      -e "s/127.0.0.1:2576/127.0.0.1:$((base + 6))/" -e "s/127.0.0.1:2577/127.0.0.1:$((base + 7))/" \
      -e "s/127.0.0.1:2578/127.0.0.1:$((base + 8))/" -e "s/127.0.0.1:2579/127.0.0.1:$((base + 9))/" \
      -e "s#127.0.0.1:2580/#127.0.0.1:$((base + 10))/#" -e 's/127.0.0.1:8575/127.0.0.1:0/' \
      -e "s#\"\\.\\./target/#\"$PWD/target/#" -e "s#\"scripts/#\"$PWD/examples/scripts/#" \
      examples/clinic.toml >"$work/clinic.toml"
}

# one_route BASE [STEPS] [STORE]: the lightest pipeline that still does what the clinic's does
# per message: after-store ACKs with fsync, a WASM step (the lab-code mapping) and a Rhai step
# (the PV1 location script), one MLLP destination; every built-in message takes it. Its
# `courier listen` stand-in on BASE+1 (log in $work/out-one/one.log, PID in $one_standin), its
# config in $work/one/one-route.toml listening on BASE+0 (admin server on a free port); the
# lookup tables are the clinic's, taken from examples/clinic.toml. STEPS (default "wasm rhai")
# names the steps the route keeps, in that order ("" for none); STORE is a line for the config's
# [store] table (e.g. "fsync = false"): bench/parts.sh takes the pipeline apart with them.
one_route() {
  local base=$1 steps=${2-wasm rhai} store=${3:-} step
  mkdir -p "$work/out-one" "$work/one"
  "$bin" listen --port $((base + 1)) >"$work/out-one/one.log" 2>&1 & one_standin=$!
  pids+=($one_standin)
  {
    cat <<EOF
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "front"
bind = "127.0.0.1:$base"
max_connections = 64

[[destination]]
name = "chart"
address = "127.0.0.1:$((base + 1))"

[[route]]
name = "all-to-chart"
destinations = ["chart"]
EOF
    for step in $steps; do
      case $step in
        wasm) printf '  [[route.step]]\n  wasm = "%s"\n  settings = %s\n' \
                "$PWD/target/wasm-plugins/wasm32-wasip2/release/lab_codes.wasm" \
                '{ table = "loinc", direction = "to_loinc" }' ;;
        rhai) printf '  [[route.step]]\n  script = "%s"\n' "$PWD/examples/scripts/pv1_location.rhai" ;;
        *) echo "one_route: no step $step" >&2; return 1 ;;
      esac
    done
    [ -n "$store" ] && printf '\n[store]\n%s\n' "$store"
    echo
    sed -n '/^\[tables\./,/^\[\[route\]\]/p' examples/clinic.toml | sed '$d'
  } >"$work/one/one-route.toml"
}

# start_one_route BASE: runs one_route's config (store in $work/store-one, log in
# $work/logs/one.log) and waits until it listens; its PID is in $engine.
start_one_route() {
  mkdir -p "$work/logs"
  COURIER_ADMIN_TOKEN=bench-token-0123456789 \
    "$bin" run "$work/one/one-route.toml" --store-dir "$work/store-one" \
    2>>"$work/logs/one.log" & engine=$!
  pids+=($engine)
  wait_port 127.0.0.1 "$1"
}

# start_clinic BASE: runs the example clinic from clinic_stand_ins (store in $work/store, kept
# between starts) and waits until it listens; its PID is in $engine. Its log goes to
# $work/logs/engine.log: not beside the config, whose directory the engine watches for changes
# (there, every log line would wake the watcher).
start_clinic() {
  mkdir -p "$work/logs"
  COURIER_ADMIN_TOKEN=bench-token-0123456789 \
    "$bin" run "$work/clinic.toml" --store-dir "$work/store" 2>>"$work/logs/engine.log" & engine=$!
  pids+=($engine)
  wait_port 127.0.0.1 "$1"
}
