#!/usr/bin/env bash
# Installs the Debian packages the test suite and `make run` use as real peers:
# SIPp (package sip-tester), mosquitto (+ clients), redis-server, chromium (wallboard test),
# and two real softphones for tests/softphones: baresip (baresip-core), linphonec (linphone-cli);
# socat: TLS relays for SIPp, whose Debian build has no TLS (tests/callpath/test_sipp_tls.py);
# kamailio: the cluster's load balancer (examples/cluster/, tests/cluster/), run in the foreground;
# gcc and Debian's python3.11-dev when missing: the mypyc build of gateway/sip.
# Idempotent: does nothing when every tool is already on PATH.
set -euo pipefail

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
command -v linphonec >/dev/null 2>&1 || need+=(linphone-cli)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # test PKI for the TLS tests (tests/tls_certs.py)
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
# The mypyc build of gateway/sip (scripts/build_native.py, run by `make install` after
# this script): a C compiler and the interpreter's headers. Headers only for Debian's own
# interpreter (a pyenv or other self-built Python carries its own).
command -v cc >/dev/null 2>&1 || need+=(gcc)
PY=${PY:-python3.11}
if py_path=$(readlink -f "$(command -v "$PY" 2>/dev/null)" 2>/dev/null) && [ "${py_path%/*}" = /usr/bin ]; then
  inc=$("$py_path" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
  if [ -n "$inc" ] && [ ! -f "$inc/Python.h" ]; then need+=("${py_path##*/}-dev"); fi
fi
# mosquitto and redis-server install to /usr/sbin on Debian; look there too.
for pair in "mosquitto:/usr/sbin/mosquitto" "redis-server:/usr/bin/redis-server"; do
  pkg=${pair%%:*}; path=${pair#*:}
  if [ -x "$path" ]; then
    tmp=(); for p in "${need[@]}"; do [ "$p" = "$pkg" ] || tmp+=("$p"); done; need=("${tmp[@]+"${tmp[@]}"}")
  fi
done

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "installing Debian packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# The packages start system services on install on some machines; the tests start
# their own instances on free ports and never use the system ones.
# kamailio's package enables a system service on 5060: the tests and examples/cluster run
# their own in the foreground, so stop and disable it where an init system runs.
if printf '%s\n' "${need[@]}" | grep -qx kamailio; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now kamailio >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/kamailio ]; then
    $SUDO /etc/init.d/kamailio stop >/dev/null 2>&1 || true
  fi
fi
