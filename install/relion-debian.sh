#!/usr/bin/env bash
# Install Debian's RELION (3.1.3 on bookworm, CPU build) for the integration tests, with its GUI,
# a virtual X server and xdotool so a test can drive the GUI headless as a user would.
# Needs root (or sudo). Skips when relion_refine is already on PATH.
set -euo pipefail
if command -v relion_refine >/dev/null 2>&1 && command -v relion_pipeliner >/dev/null 2>&1 \
        && command -v relion >/dev/null 2>&1 && command -v Xvfb >/dev/null 2>&1 && command -v xdotool >/dev/null 2>&1; then
    echo "RELION already installed: $(relion_refine --version 2>&1 | head -1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to apt-get install relion" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends relion relion-gui xvfb xauth xfonts-base fonts-dejavu-core xdotool >/dev/null
echo "installed: $(relion_refine --version 2>&1 | head -1)"
