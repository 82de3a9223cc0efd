#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the example messages (examples/messages/*.hl7), so every
# run starts from real traffic instead of rediscovering MSH from nothing. Idempotent; the
# corpus directories are not committed (fuzz/.gitignore), only this script.
set -euo pipefail
cd "$(dirname "$0")"
examples=(../examples/messages/*.hl7)

for target in hl7_parse hl7_differential hl7_ack hl7_escape; do
    mkdir -p "corpus/$target"
    for f in "${examples[@]}"; do
        cp "$f" "corpus/$target/$(basename "$f")"
    done
done
# hl7_ack reads its first byte as a choice of code, then the message.
for f in "${examples[@]}"; do
    { printf 'R'; cat "$f"; } > "corpus/hl7_ack/code-$(basename "$f")"
done

# mllp_codec takes structured input (a limit, cut points, then the stream); libFuzzer maps any
# bytes onto it, so framed messages, alone and back to back, make good seeds.
mkdir -p corpus/mllp_codec
all=corpus/mllp_codec/all-framed
: > "$all"
for f in "${examples[@]}"; do
    { printf '\x0b'; cat "$f"; printf '\x1c\r'; } > "corpus/mllp_codec/$(basename "$f")"
    { printf '\x0b'; cat "$f"; printf '\x1c\r'; } >> "$all"
done
echo "seeded fuzz/corpus/ from ${#examples[@]} example messages ($(find corpus -type f | wc -l) files in all)"
