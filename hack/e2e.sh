#!/usr/bin/env bash
# e2e.sh: `make e2e`. Bring up the single-node cluster (hack/cluster), run the
# end-to-end tests on it (test/e2e, build tag e2e), and take the cluster down again
# whatever happened (trap). Prints how long each part took.
#
# Environment:
#   E2E_KEEP_CLUSTER=1      leave the cluster up afterwards (for debugging)
#   HOSTSTACK_CLUSTER_LOGS  where `down` copies the components' logs (default bin/e2e-logs)
#   E2E_RUN                 go test -run pattern (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

GO="${GO:-go}"

# One e2e at a time per machine: the cluster's paths are machine-wide (etcd data,
# /var/lib/kubelet, /etc/cni/net.d) and `up` reuses a running cluster, so a second
# run would install into the first one's cluster and take it down under it. Wait
# for the lock instead (the holder always takes its cluster down).
lock=/run/lock/hoststack-e2e.lock
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
if ! flock -n 9; then
	echo "e2e: another make e2e holds $lock; waiting for it (up to 60 min)"
	flock -w 3600 9 || { echo "e2e: $lock still held after 60 min" >&2; exit 1; }
fi
export HOSTSTACK_CLUSTER_LOGS="${HOSTSTACK_CLUSTER_LOGS:-$PWD/bin/e2e-logs}"
mkdir -p bin
# One binary for up and down, so `down` still works if the tree changes meanwhile.
"$GO" build -o bin/hoststack-cluster ./hack/cluster

elapsed() { local s=$(($(date +%s) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
timings=()
teardown() {
	local rc=$?
	if [[ "${E2E_KEEP_CLUSTER:-}" == 1 ]]; then
		echo "e2e: E2E_KEEP_CLUSTER=1: cluster left up (bin/hoststack-cluster down removes it)"
	else
		local t=$(date +%s)
		bin/hoststack-cluster down || rc=1
		timings+=("cluster down $(elapsed "$t")")
	fi
	printf 'e2e: %s\n' "${timings[@]}"
	exit "$rc"
}
trap teardown EXIT

t=$(date +%s)
bin/hoststack-cluster up
timings+=("cluster up (binaries included) $(elapsed "$t")")

t=$(date +%s)
rc=0
"$GO" test -tags e2e -count=1 -timeout 40m -v ${E2E_RUN:+-run "$E2E_RUN"} ./test/e2e/ || rc=$?
timings+=("e2e tests $(elapsed "$t")")
exit "$rc"
