#!/usr/bin/env bash
# Install the smartfarm edge on 64-bit Raspberry Pi OS (Debian bookworm) as a hardened systemd
# service. Idempotent: a second run changes nothing and never touches existing config or secrets.
#
#   sudo deploy/pi/install.sh [SOURCE]          # SOURCE: project folder or wheel (default: this repo)
#   sudo deploy/pi/install.sh --uninstall       # remove unit, venv, wrapper; keep config and data
#   sudo deploy/pi/install.sh --uninstall --purge   # …and config, data and the smartfarm user
#
# Layout: /opt/smartfarm/venv (code), /etc/smartfarm (edge.toml; credentials/ 0700 with secrets
# 0600, owned by smartfarm), /var/lib/smartfarm (SQLite, broker password hashes; the only path
# the service may write), /etc/systemd/system/smartfarm-edge.service, /usr/local/bin/smartfarm.
#
# Trial installs (tests): --root DIR prefixes every path and needs --dry-run-systemd (or
# SMARTFARM_DRY_RUN=1), which prints useradd/chown/systemctl/apt-get instead of running them and
# runs `smartfarm edge init` as the calling user. SYSTEMCTL overrides the systemctl command.
# Other options: --farm-id ID, --api-host ADDR (default 0.0.0.0), --tls-name NAME (repeatable),
# --python PY, --empty (no example rooms and devices: for an edge the cloud will manage).
# pip honours PIP_* variables (PIP_INDEX_URL, PIP_NO_DEPS, …).
set -euo pipefail

SERVICE=smartfarm-edge.service
USER_NAME=smartfarm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ROOT=/
SOURCE=""
UNINSTALL=0
PURGE=0
DRY=${SMARTFARM_DRY_RUN:-0}
PYTHON=${PYTHON:-python3}
FARM_ID=""
EMPTY=0
API_HOST=0.0.0.0
TLS_NAMES=()

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: error: $*" >&2; exit 2; }
log() { echo "==> $*"; }

while (($#)); do
    case $1 in
        --root) ROOT=${2:?--root needs a folder}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --dry-run-systemd) DRY=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift ;;
        --farm-id) FARM_ID=${2:?--farm-id needs an id}; shift ;;
        --empty) EMPTY=1 ;;
        --api-host) API_HOST=${2:?--api-host needs an address}; shift ;;
        --tls-name) TLS_NAMES+=("${2:?--tls-name needs a name}"); shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z $SOURCE ]] || die "only one SOURCE allowed"; SOURCE=$1 ;;
    esac
    shift
done
((PURGE == 0 || UNINSTALL == 1)) || die "--purge only goes with --uninstall"
[[ $ROOT == /* ]] || die "--root must be an absolute path"
ROOT=${ROOT%/}

OPT=$ROOT/opt/smartfarm
VENV=$OPT/venv
ETC=$ROOT/etc/smartfarm
DATA=$ROOT/var/lib/smartfarm
UNIT=$ROOT/etc/systemd/system/$SERVICE
WRAPPER=$ROOT/usr/local/bin/smartfarm
STAMP=$OPT/.source-sha256
read -r -a SYSTEMCTL_CMD <<<"${SYSTEMCTL:-systemctl}"

# Commands that change the system beyond our folders: printed instead when dry-running.
sys() {
    if ((DRY)); then echo "+ $*"; else "$@"; fi
}
systemctl_() {  # SYSTEMCTL (e.g. "echo systemctl") wins, even when dry-running
    if ((DRY)) && [[ -z ${SYSTEMCTL:-} ]]; then echo "+ systemctl $*"; return; fi
    "${SYSTEMCTL_CMD[@]}" "$@"
}
# Run as the service user, so what the edge writes later stays readable by it.
as_user() {
    if ((DRY)); then "$@"; else runuser -u "$USER_NAME" -- "$@"; fi
}
user_exists() {
    if [[ -n $ROOT ]]; then grep -q "^$USER_NAME:" "$ROOT/etc/passwd" 2>/dev/null
    else getent passwd "$USER_NAME" >/dev/null; fi
}

# Writes $2 to $1 (mode $3) only if the content differs; returns 0 if it wrote.
install_if_changed() {
    local dest=$1 content=$2 mode=$3
    if [[ -f $dest ]] && [[ $(cat "$dest") == "$content" ]]; then
        [[ $(stat -c %a "$dest") == "${mode#0}" ]] || chmod "$mode" "$dest"
        return 1
    fi
    mkdir -p "$(dirname "$dest")"
    printf '%s\n' "$content" >"$dest.tmp.$$"
    chmod "$mode" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
}

fingerprint() {  # of the code being installed: a re-run with the same code skips pip
    if [[ -f $1 ]]; then sha256sum <"$1" | cut -d' ' -f1; return; fi
    (cd "$1" && find . \( -name .git -o -name .venv -o -name build -o -name dist -o -name '*.egg-info' \
            -o -name __pycache__ -o -name tests -o -name bench -o -name .demo \) -prune -o \
            -type f \( -name '*.py' -o -name '*.sql' -o -name '*.toml' -o -path './*/static/*' \) \
            -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

uninstall() {
    log "stopping and removing $SERVICE"
    systemctl_ disable --now "$SERVICE" || true
    rm -f "$UNIT" "$WRAPPER"
    systemctl_ daemon-reload || true
    log "removing $OPT"
    rm -rf "$OPT"
    if ((PURGE)); then
        log "purging $ETC, $DATA and the $USER_NAME user"
        rm -rf "$ETC" "$DATA"
        if user_exists; then
            sys userdel "$USER_NAME"
        fi
    else
        log "kept $ETC (config, device credentials) and $DATA (readings); --purge removes them"
    fi
}

install_edge() {
    if [[ $(uname -m) != aarch64 ]]; then
        echo "note: $(uname -m), not aarch64 (64-bit Raspberry Pi OS); continuing"
    fi
    SOURCE=${SOURCE:-$(cd "$HERE/../.." && pwd)}
    [[ -e $SOURCE ]] || die "source $SOURCE not found (a project folder or a .whl)"
    SOURCE=$(realpath "$SOURCE")
    if [[ -d $SOURCE ]]; then
        [[ -f $SOURCE/pyproject.toml ]] || die "$SOURCE has no pyproject.toml"
    elif [[ $SOURCE != *.whl ]]; then
        die "source $SOURCE is neither a folder nor a wheel"
    fi
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        log "installing python3-venv"
        sys apt-get install -y python3-venv
    fi
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
        die "$PYTHON is older than Python 3.11"

    if ! user_exists; then
        log "creating system user $USER_NAME"
        sys useradd --system --user-group --home-dir /var/lib/smartfarm \
            --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
    fi
    install -d -m 0755 "$OPT"
    install -d -m 0750 "$ETC" "$DATA"
    sys chown "$USER_NAME:$USER_NAME" "$ETC" "$DATA"

    local code_changed=0 sum
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
        code_changed=1
    fi
    sum=$(fingerprint "$SOURCE")
    if [[ ! -f $STAMP ]] || [[ $(cat "$STAMP") != "$sum" ]]; then
        log "installing smartfarm from $SOURCE"
        # --force-reinstall: same version number, new code. The second call adds dependencies.
        "$VENV/bin/pip" install --quiet --no-deps --force-reinstall "$SOURCE"
        "$VENV/bin/pip" install --quiet "$SOURCE"
        echo "$sum" >"$STAMP"
        code_changed=1
    fi
    [[ -x $VENV/bin/smartfarm ]] || die "$VENV/bin/smartfarm missing after pip install"

    if [[ ! -f $ETC/edge.toml ]]; then
        local host farm
        host=$(hostname -s 2>/dev/null || echo raspberrypi)
        farm=${FARM_ID:-$(echo "$host" | tr -c 'A-Za-z0-9_\n-' '-')}
        if ((${#TLS_NAMES[@]} == 0)); then
            TLS_NAMES=("$host" "$host.local" localhost 127.0.0.1)
            for ip in $(hostname -I 2>/dev/null || true); do TLS_NAMES+=("$ip"); done
        fi
        local args=(edge init "$ETC" --farm-id "$farm" --broker-port 1884 --api-port 8080
                    --api-host "$API_HOST" --data-dir "$DATA" --tls --tls-host 0.0.0.0)
        for name in "${TLS_NAMES[@]}"; do args+=(--tls-name "$name"); done
        if ((EMPTY)); then args+=(--empty); fi
        log "writing $ETC/edge.toml (farm $farm), device credentials, TLS CA and certificate"
        as_user "$VENV/bin/smartfarm" "${args[@]}" >/dev/null
        if [[ -n $ROOT ]]; then  # the config names the paths as the running system sees them
            sed -i -e "s#^data_dir = \"$ROOT/#data_dir = \"/#" \
                -e "s#^password_file = \"$ROOT/#password_file = \"/#" "$ETC/edge.toml"
        fi
    else
        log "keeping $ETC/edge.toml and its credentials"
    fi
    # Secrets stay private on every run (a hand-copied file may have come in 0644).
    chmod 0644 "$ETC/edge.toml"  # no secrets in it; `edge device add` writes it 0644 too
    find "$ETC" -type d -exec chmod 0750 {} +
    find "$ETC/credentials" -type d -exec chmod 0700 {} +
    find "$ETC/credentials" -type f ! -name '*.crt' -exec chmod 0600 {} +
    find "$ETC/credentials" -type f -name '*.crt' -exec chmod 0644 {} +
    find "$DATA" -type f -name passwd -exec chmod 0600 {} +
    sys chown -R "$USER_NAME:$USER_NAME" "$ETC" "$DATA"

    install_if_changed "$WRAPPER" "#!/bin/sh
# smartfarm as the service's user, so files it writes (device credentials) stay readable by it.
if [ \"\$(id -u)\" = 0 ]; then
    exec runuser -u $USER_NAME -- /opt/smartfarm/venv/bin/smartfarm \"\$@\"
fi
exec /opt/smartfarm/venv/bin/smartfarm \"\$@\"" 0755 || true

    local unit_changed=0
    if install_if_changed "$UNIT" "$(cat "$HERE/$SERVICE")" 0644; then
        unit_changed=1
        systemctl_ daemon-reload
    fi
    systemctl_ enable "$SERVICE"
    if ((unit_changed || code_changed)); then
        log "(re)starting $SERVICE"
        systemctl_ restart "$SERVICE"
    else
        systemctl_ start "$SERVICE"  # a no-op when it runs
    fi
    log "done: journalctl -u $SERVICE -f   |   local page: http://$(hostname -s 2>/dev/null).local:8080/"
    log "admin password: $ETC/credentials/admin-password; devices trust $ETC/credentials/tls/ca.crt"
}

if ((DRY == 0)); then
    [[ -z $ROOT ]] || die "--root is for trial installs: use it with --dry-run-systemd"
    [[ $(id -u) == 0 ]] || die "run as root (sudo), or with --root DIR --dry-run-systemd for a trial"
fi
if ((UNINSTALL)); then uninstall; else install_edge; fi
