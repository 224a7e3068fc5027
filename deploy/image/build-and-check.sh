#!/usr/bin/env bash
# Build deploy/docker/Dockerfile with podman on a Debian bookworm base made by debootstrap from
# Debian's own repository (no container registry needed), then run it: a cloud container on a
# throwaway PostgreSQL database answers /health, and an edge container fed by a simulator
# container syncs its readings into it (deploy/image/check.py).
#
#   deploy/image/build-and-check.sh [base|build|check|all]     (default: all; as root)
#
# Phases, each timed:
#   base   debootstrap --variant=minbase bookworm (+ python3, python3-venv) from the mirror apt
#          uses, packed once into $SMARTFARM_IMAGE_CACHE (default ~/.cache/smartfarm/image) and
#          imported into podman's storage as $SMARTFARM_BASE_IMAGE.
#   build  podman build --build-arg PYTHON_IMAGE=$SMARTFARM_BASE_IMAGE -t $SMARTFARM_IMAGE,
#          with this machine's pip settings (index URLs, CA bundle) passed in as build secrets.
#   check  deploy/image/check.py against the built image.
#
# Environment: SMARTFARM_IMAGE (localhost/smartfarm:latest), SMARTFARM_BASE_IMAGE
# (localhost/smartfarm-base:bookworm), SMARTFARM_IMAGE_CACHE, SMARTFARM_DEBIAN_MIRROR (default:
# the first Debian URI in /etc/apt/sources.list*), SMARTFARM_IMAGE_REBASE=1 (make the base again),
# DATABASE_URL (the PostgreSQL server the check makes its throwaway database on).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
IMAGE="${SMARTFARM_IMAGE:-localhost/smartfarm:latest}"
BASE_IMAGE="${SMARTFARM_BASE_IMAGE:-localhost/smartfarm-base:bookworm}"
CACHE="${SMARTFARM_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smartfarm/image}"
SUITE=bookworm
# python3-venv for the image's venv; ca-certificates, netbase and tzdata as the python slim image.
PACKAGES=python3,python3-venv,ca-certificates,netbase,tzdata
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
BASE_TAR="$CACHE/debian-$SUITE-minbase-$(printf '%s' "$PACKAGES" | sha256sum | cut -c1-12).tar"

die() { echo "build-and-check: $*" >&2; exit 1; }
say() { echo "build-and-check: $*" >&2; }

# Seconds since $1 (from `date +%s.%N`), for the phase timings.
since() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$1"; }

need_tools() {
  local tool missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  die "missing ${missing[*]}: apt-get install -y podman buildah debootstrap runc"
}

debian_mirror() {
  if [ -n "${SMARTFARM_DEBIAN_MIRROR:-}" ]; then echo "$SMARTFARM_DEBIAN_MIRROR"; return; fi
  local found
  # deb822 (URIs: …) or one-line (deb URL suite …) sources; the first Debian archive wins.
  found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
             2>/dev/null \
           | sed -n -E 's#^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)([^[:space:]]+/debian)/?([[:space:]].*)?$#\3#p' \
           | head -n 1)"
  echo "${found:-http://deb.debian.org/debian}"
}

# ---- podman: find the options this machine needs ------------------------------------------------
# A sandbox may forbid what podman asks by default: crun refuses hybrid cgroups (v1 + a v2 mount
# with controllers), and podman raises RLIMIT_NOFILE/NPROC above the hard limits of a process
# without CAP_SYS_RESOURCE. Probe the base image with each candidate until one runs.
PODMAN=(podman)
RUN_OPTS=()
probe_podman() {
  local nofile nproc runtime err=""
  nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=32768
  [ "$nproc" -gt 32768 ] && nproc=32768
  local limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
  for runtime in crun runc; do
    command -v "$runtime" >/dev/null || continue
    for opts in "" "limits"; do
      local try=()
      [ -n "$opts" ] && try+=("${limits[@]}")
      if err="$(podman --runtime "$runtime" run --rm ${try[@]+"${try[@]}"} "$BASE_IMAGE" true \
                  2>&1)"; then
        PODMAN=(podman --runtime "$runtime")
        RUN_OPTS=("${try[@]}")
        say "podman: --runtime $runtime ${RUN_OPTS[*]}"
        return
      fi
    done
  done
  case "$err" in
    *hybrid*) die "crun cannot run containers on hybrid cgroups here and runc is missing" \
                  "(apt-get install runc): $err" ;;
    *setrlimit*|*rlimit*) die "podman cannot set container rlimits (no CAP_SYS_RESOURCE): $err" ;;
    *) die "podman cannot start a container on this machine: $err" ;;
  esac
}

# ---- base: debootstrap → tarball (cached) → podman image ----------------------------------------
phase_base() {
  need_tools podman debootstrap
  local start mirror rootfs
  start="$(date +%s.%N)"
  if [ "${SMARTFARM_IMAGE_REBASE:-0}" = 1 ]; then
    rm -f "$BASE_TAR"
    podman rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
  fi
  if [ ! -s "$BASE_TAR" ]; then
    [ -r "$KEYRING" ] || die "no Debian archive keyring at $KEYRING" \
      "(apt-get install debian-archive-keyring)"
    mirror="$(debian_mirror)"
    say "debootstrap $SUITE from $mirror (minbase + $PACKAGES)"
    mkdir -p "$CACHE"
    rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf '$rootfs'" EXIT
    debootstrap --variant=minbase --include="$PACKAGES" \
      --keyring="$KEYRING" \
      "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed ($CACHE/debootstrap.log): $(tail -n 3 "$CACHE/debootstrap.log")"
    # Nothing the image needs: downloaded .debs and package lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.part" .
    mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$rootfs"
    trap - EXIT
  else
    say "debootstrap: cached $BASE_TAR"
  fi
  if ! podman image exists "$BASE_IMAGE"; then
    podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
      "$BASE_TAR" "$BASE_IMAGE" >/dev/null
  fi
  say "base $BASE_IMAGE ready in $(since "$start") s"
  echo "phase base $(since "$start")"
}

# ---- build: the Dockerfile on that base, pip as on this machine ---------------------------------
phase_build() {
  need_tools podman
  podman image exists "$BASE_IMAGE" || die "no base image $BASE_IMAGE: run '$0 base' first"
  local start work ca
  start="$(date +%s.%N)"
  work="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf '$work'" EXIT
  # This machine's pip index URLs and CA bundle (a TLS-inspecting proxy's CA lives there) go in
  # as build secrets, never into a layer.
  ca="$(python3 "$REPO/deploy/image/pip_conf.py" "$work/pip.conf")" || die "no pip settings"
  say "pip in the build: $(grep -v '^\[' "$work/pip.conf" | tr '\n' ' ')(CA bundle $ca)"
  # chroot isolation: RUN steps need no OCI runtime, cgroups or network namespace; they use the
  # host's network, as pip on this machine does.
  podman build --isolation chroot --network host --layers --format docker \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
    --secret "id=pip.conf,src=$work/pip.conf" --secret "id=pip-ca,src=$ca" \
    -f "$REPO/deploy/docker/Dockerfile" -t "$IMAGE" "$REPO"
  rm -rf "$work"
  trap - EXIT
  say "built $IMAGE in $(since "$start") s"
  echo "phase build $(since "$start")"
}

# ---- check: run the containers -----------------------------------------------------------------
phase_check() {
  need_tools podman python3
  podman image exists "$IMAGE" || die "no image $IMAGE: run '$0 build' first"
  podman image exists "$BASE_IMAGE" || die "no base image $BASE_IMAGE: run '$0 base' first"
  probe_podman
  local start
  start="$(date +%s.%N)"
  python3 "$REPO/deploy/image/check.py" --image "$IMAGE" \
    --podman "${PODMAN[*]}" --run-opts "${RUN_OPTS[*]}" \
    --edge-config "$REPO/deploy/docker/edge/edge.toml"
  say "checked $IMAGE in $(since "$start") s"
  echo "phase check $(since "$start")"
}

[ "$(id -u)" = 0 ] || die "run as root (podman storage and debootstrap need it)"
case "${1:-all}" in
  base) phase_base ;;
  build) phase_build ;;
  check) phase_check ;;
  all) phase_base; phase_build; phase_check ;;
  *) die "usage: $0 [base|build|check|all]" ;;
esac
