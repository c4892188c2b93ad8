#!/usr/bin/env bash
# Installs Debian's `prometheus` package (the server and promtool) for the fleet-report test,
# when it is not there yet. Idempotent and quick when already installed.
#
#   scripts/prometheus.sh        prints the path of the prometheus binary
set -euo pipefail

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        sudo=sudo
    else
        sudo=
    fi
    echo "prometheus: installing Debian's prometheus package" >&2
    # The package's service is not wanted here: tests start their own server on loopback.
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >&2
    # policy-rc.d 101 keeps the package scripts from starting a daemon during the install.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod +x "$policy"
        trap '$sudo rm -f "$policy"' EXIT
    fi
    $sudo apt-get install -y -qq --no-install-recommends prometheus >&2
fi
command -v prometheus
