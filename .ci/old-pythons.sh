#!/usr/bin/env bash
# Prints, colon-separated, real Python interpreters older than 3.11 for the device-runtime test (JetPack 5 has 3.8,
# JetPack 6 3.10): the machine's own (pyenv's or PATH's) where it has them, else Debian bullseye's python3.9
# unpacked under .ci/.py39 through a sources list of its own (the system's apt sources are never changed).
# Needs LD_LIBRARY_PATH to include .ci/.py39/root/usr/lib/x86_64-linux-gnu for the bullseye one (.ci/run sets it).
set -euo pipefail
cd "$(dirname "$0")"
found=()
pick() {
  for c in "$(command -v "python$1" || true)" /root/.pyenv/versions/"$1".*/bin/python"$1"; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys, venv' >/dev/null 2>&1; then found+=("$c"); return; fi
  done
}
if [ -z "${EDGEVIT_BULLSEYE_PYTHON:-}" ]; then pick 3.8; pick 3.10; fi
if [ ${#found[@]} -eq 0 ]; then
  d="$PWD/.py39"
  if [ ! -x "$d/root/usr/bin/python3.9" ]; then
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/debs" "$d/root"
    echo "deb http://deb.debian.org/debian bullseye main" > "$d/sources.list"
    o=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$d/lists"
       -o "Dir::Cache=$d/cache" -o Dir::State::status=/dev/null)
    apt-get -qq "${o[@]}" update >&2
    (cd "$d/debs" && apt-get -qq "${o[@]}" download python3.9-minimal libpython3.9-minimal libpython3.9-stdlib \
      python3.9 python3.9-venv python3-distutils python3-lib2to3 libssl1.1 libffi7 libmpdec3 >&2)
    for f in "$d"/debs/*.deb; do dpkg -x "$f" "$d/root"; done
  fi
  found+=("$d/root/usr/bin/python3.9")
fi
(IFS=:; echo "${found[*]}")
