#!/usr/bin/env bash
# test-dpdk.sh: run the DPDK link layer's tests (engine/transport/netstack/link/dpdk,
# build tag dpdk) and the userspace transport's tests on it against real DPDK,
# installing what they need first.
#
#   hack/test-dpdk.sh                      # all tests
#   hack/test-dpdk.sh -run TestNetemLoss   # extra arguments go to `go test`
#   hack/test-dpdk.sh -run XXX -bench .    # the throughput benchmark
#
# Packages (Debian 12, installed with apt-get when missing; needs root):
#   libdpdk-dev pkg-config gcc   to build (cgo, `#cgo pkg-config: libdpdk`; DPDK 22.11)
#   iproute2 ethtool nftables    for the tests' veth pairs, offload settings and packet
#                                loss (nftables only where the kernel lacks sch_netem)
# The tests need root (network namespaces, packet sockets); they run with
# HOSTSTACK_REQUIRE_PRIVILEGED=1, so a missing prerequisite fails instead of skipping.
#
# Measured on 2 cores (Debian 12, other engineers' builds and tests sharing the
# machine): from a machine without libdpdk-dev (and nftables), with an empty Go build
# cache but the module cache filled, the whole script took 1m59s: apt-get update and
# install (~400 packages, nearly all librte-*), the cgo build of gVisor and the
# package, and 29 s of tests (most of it the 1 GiB transfer each way). With the
# packages installed and the build cache warm it takes 35-60 s, depending on load.
#
# Environment:
#   GO                       go command (default go)
#   HOSTSTACK_DPDK_LARGE     bytes for TestLargeTransfer (default 1 GiB)
#   HOSTSTACK_DPDK_LOG_LEVEL EAL --log-level values, space separated (default warning)
set -euo pipefail

cd "$(dirname "$0")/.."
GO="${GO:-go}"
# The link layer's own tests, and the userspace transport's tests (engine,
# netstack, apps) with DPDK added to the link layers they run on.
PKGS=(./engine/transport/netstack/link/dpdk ./engine/transport/netstack)

need=()
for p in libdpdk-dev pkg-config gcc iproute2 ethtool nftables; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		need+=("$p")
	fi
done
if ((${#need[@]})); then
	if [[ $(id -u) != 0 ]]; then
		echo "test-dpdk.sh: missing Debian packages (${need[*]}) and not root to install them" >&2
		exit 1
	fi
	echo "test-dpdk.sh: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

ver="$(pkg-config --modversion libdpdk)"
case "$ver" in
22.11*) ;;
*) echo "test-dpdk.sh: warning: libdpdk $ver; this code was written and tested against 22.11" >&2 ;;
esac
echo "test-dpdk.sh: DPDK $ver" >&2

export HOSTSTACK_REQUIRE_PRIVILEGED=1
exec "$GO" test -tags dpdk -count=1 -timeout 20m "$@" "${PKGS[@]}"
