# shellcheck shell=bash
# Sourced by cluster.sh and remote.sh: install the Debian packages of PACKAGES that are missing.
# The sourcing script defines PACKAGES and log().

ensure_packages() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    # needrestart (Ubuntu, some Debian) would otherwise ask about services or print noise.
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
}
