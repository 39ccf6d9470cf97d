#!/bin/sh
# setup.sh — installs what mpk needs on a fresh Debian machine (as root, or with sudo) and builds
# it. Safe to run again: it skips what is already there.
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=""
for pkg in build-essential pkg-config libcjson-dev libpcre2-dev libutf8proc-dev libcriterion-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $need
fi
make -j"$(nproc)" all
