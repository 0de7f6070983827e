#!/usr/bin/env bash
# The kind workflow's "HPC side": a privileged Debian 12 container on the kind network running the
# single-node Slurm of deploy/local/cluster.sh and interlink-slurm on 0.0.0.0:4000.
#
#   deploy/e2e/kind/slurm-container.sh start     # prints the container's address on the kind network
#   deploy/e2e/kind/slurm-container.sh logs      # plugin and Slurm logs (after a failure)
#   deploy/e2e/kind/slurm-container.sh stop
#
# ILS_E2E_RUNTIME=apptainer (for vk-test-set, whose templates name images of their registries):
# Apptainer from its release .deb, and the plugin runs images from their registries instead of
# mapping them to the local Charliecloud image.
#
# Privileged because cluster.sh creates GPU device nodes (mknod) and ch-run needs user namespaces.
set -euo pipefail
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../../.." && pwd -P)
NAME=${ILS_E2E_CONTAINER:-ils-slurm}
NETWORK=${ILS_E2E_NETWORK:-kind}
IMAGE=${ILS_E2E_BASE_IMAGE:-debian:12}
RUNTIME=${ILS_E2E_RUNTIME:-charliecloud}
APPTAINER_VERSION=${ILS_E2E_APPTAINER_VERSION:-1.3.1}

inside() {
    # Runs in the container, as root, with the repository at /src.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-venv make procps ca-certificates >/dev/null
    if [ "$RUNTIME" = apptainer ]; then
        apt-get install -y -qq curl >/dev/null
        curl -fsSL -o /tmp/apptainer.deb \
            "https://github.com/apptainer/apptainer/releases/download/v${APPTAINER_VERSION}/apptainer_${APPTAINER_VERSION}_amd64.deb"
        apt-get install -y -qq /tmp/apptainer.deb >/dev/null
        apptainer --version
    fi
    cd /src
    ILS_CLUSTER_DIR=/var/lib/ils-cluster deploy/local/cluster.sh up
    eval "$(ILS_CLUSTER_DIR=/var/lib/ils-cluster deploy/local/cluster.sh env)"
    python3 -m venv /opt/interlink-slurm
    /opt/interlink-slurm/bin/pip install --quiet /src
    mkdir -p /etc/interlink-slurm
    /opt/interlink-slurm/bin/python deploy/e2e/scenarios.py config \
        --listen 0.0.0.0:4000 --data-root /var/tmp/interlink-slurm/pods --runtime "$RUNTIME" \
        > /etc/interlink-slurm/config.yaml
    cat /etc/interlink-slurm/config.yaml
    USER=root nohup /opt/interlink-slurm/bin/interlink-slurm serve \
        --config /etc/interlink-slurm/config.yaml >/var/log/interlink-slurm.log 2>&1 &
    for _ in $(seq 60); do
        if python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:4000/healthz", timeout=2)' 2>/dev/null; then
            echo "interlink-slurm is up"
            return 0
        fi
        sleep 1
    done
    cat /var/log/interlink-slurm.log
    return 1
}

case ${1:-} in
    start)
        docker rm -f "$NAME" >/dev/null 2>&1 || true
        docker run -d --name "$NAME" --hostname "$NAME" --privileged --network "$NETWORK" \
            -v "$REPO:/src" "$IMAGE" sleep infinity >/dev/null
        docker exec -e ILS_E2E_RUNTIME="$RUNTIME" -e ILS_E2E_APPTAINER_VERSION="$APPTAINER_VERSION" \
            "$NAME" bash /src/deploy/e2e/kind/slurm-container.sh inside >&2
        docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$NAME"
        ;;
    inside) inside ;;
    logs)
        docker exec "$NAME" bash -c 'cat /var/log/interlink-slurm.log; tail -n 50 /var/lib/ils-cluster/log/slurmctld.log; SLURM_CONF=/var/lib/ils-cluster/slurm.conf squeue -a --states=all || true' || true
        ;;
    stop) docker rm -f "$NAME" >/dev/null 2>&1 || true ;;
    *)
        echo "usage: $0 {start|logs|stop}" >&2
        exit 2
        ;;
esac
