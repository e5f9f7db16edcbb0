#!/bin/sh
# What bench/ needs beyond the shared gatebench harness (`sh ../shared/gatebench/setup.sh`):
# valgrind, for bench/telemetry_instr.py. Debian/Ubuntu; uses sudo when not root.
set -e
if command -v valgrind >/dev/null 2>&1; then
    echo "valgrind: $(valgrind --version)"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q valgrind
valgrind --version
