# Shared by scripts/run and scripts/test; sourced, not run.
# Installs Debian packages without prompts and keeps the project's virtual
# environment in .venv. Every step is idempotent: a second run installs nothing.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
# Debian's own interpreter, so that a fresh Debian 12 needs nothing else.
PYTHON=${PYTHON:-/usr/bin/python3}

say() { printf '==> %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "$0: run me as root (I install Debian packages)" >&2
        exit 1
    fi
}

# apt_install PKG...: install what is missing, non-interactively, without
# starting the services the packages ship (the tests start private ones, and
# a mail host's own services are not ours to start or restart).
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    # Postfix asks what kind of mail host this is; "No configuration" leaves
    # main.cf alone and starts nothing.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    local policy=/usr/sbin/policy-rc.d added_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"; } || rc=$?
    [ -n "$added_policy" ] && rm -f "$policy"
    return $rc
}

# The packages the milter itself needs: a compiler and libmilter for pymilter.
RUNTIME_PACKAGES=(python3 python3-venv python3-dev gcc libc6-dev libmilter-dev ca-certificates)

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    say "installing fwdmilter$1 into $VENV"
    "$VENV/bin/python" -m pip install -q -e "$ROOT$1"
}
