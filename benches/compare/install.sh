# Package installation for benches/compare.sh, sourced by it (not run on
# its own): installs the missing load tools and proxies from Debian and makes
# sure none of their services is left running. Reads LOAD_TOOL; uses `die`
# and `log` from compare.sh.
# shellcheck shell=bash disable=SC2154

# Installs the missing packages; makes sure none of their services is left
# running or enabled (we run our own instances with our own configs).
install_packages() {
    local pkgs=() services=() svc
    command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
    command -v nginx >/dev/null 2>&1 || { pkgs+=(nginx); services+=(nginx); }
    command -v haproxy >/dev/null 2>&1 || { pkgs+=(haproxy); services+=(haproxy); }
    if [[ $LOAD_TOOL == h2load ]]; then
        command -v h2load >/dev/null 2>&1 || pkgs+=(nghttp2-client)
    fi
    ((${#pkgs[@]})) || return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing ${pkgs[*]}: install them (Debian/Ubuntu: sudo apt-get install -y ${pkgs[*]}) and re-run"
    fi
    log "installing ${pkgs[*]} with apt-get"
    # policy-rc.d exit 101 keeps the packages from starting their services
    # (unless the machine already has its own policy).
    local policy=/usr/sbin/policy-rc.d made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local rc=0
    { apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq "${pkgs[@]}" >/dev/null; }; } || rc=$?
    [[ -n $made_policy ]] && rm -f "$policy"
    ((rc == 0)) || die "apt-get install ${pkgs[*]} failed"
    for svc in "${services[@]}"; do
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
        else
            if [[ -x /etc/init.d/$svc ]] && /etc/init.d/"$svc" status >/dev/null 2>&1; then
                /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
            fi
            if command -v update-rc.d >/dev/null 2>&1; then update-rc.d "$svc" disable >/dev/null 2>&1 || true; fi
        fi
    done
}
