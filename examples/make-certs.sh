#!/usr/bin/env bash
# Makes the certificates examples/clinic-tls.toml needs, with openssl: a private CA for the
# example clinic and, signed by it,
#   engine     the engine's listener certificate, also its client certificate towards the
#              receivers (localhost, 127.0.0.1)
#   receiver   the stand-in EMR/LIS/billing/research receivers' certificate (localhost,
#              127.0.0.1)
#   frontdesk  a sending system's client certificate (registration at the front desk)
# Each as NAME.pem (certificate) and NAME.key (private key, PKCS#8, EC P-256), plus ca.pem.
#
#   examples/make-certs.sh [DIR]    default DIR: examples/certs (git-ignored)
#
# Keeps what is already there; delete DIR to start over. These are for trying Courier out:
# a clinic's real certificates come from its own CA, and private keys are never committed.
set -euo pipefail
dir=${1:-"$(dirname "$0")/certs"}
mkdir -p "$dir"
cd "$dir"

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.pem -days 3650 -subj "/CN=Riverside Family Medicine example CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

issue() {
  local name=$1 san=$2
  [ -f "$name.pem" ] && [ -f "$name.key" ] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$san" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out "$name.pem" -days 825 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue engine "DNS:localhost,IP:127.0.0.1"
issue receiver "DNS:localhost,IP:127.0.0.1"
issue frontdesk "DNS:frontdesk.riverside.example"
chmod 600 ./*.key
echo "certificates in $(pwd)"
