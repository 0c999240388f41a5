#!/usr/bin/env bash
# deps.sh: makes sure the Debian packages the CPU build needs are installed.
# Installs what is missing with apt-get (as root, or through sudo); otherwise prints the exact line to run.
set -u
packages=(g++ make libboost-context-dev libopenblas-dev libgtest-dev libstb-dev fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps.sh: missing packages ${missing[*]}, and this is not a Debian/Ubuntu system: install their equivalents by hand" >&2
    exit 2
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo)
else
    echo "deps.sh: missing packages; run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 2
fi
echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { echo "deps.sh: apt-get failed; run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2; exit 2; }
