#!/usr/bin/env bash
# make demo: hoststack end to end on this machine, no cluster and no Docker.
#
#  1. a real control plane (etcd + kube-apiserver built from the Go module
#     proxy by hack/envtest-assets.sh) with the hoststack CRDs installed;
#  2. hoststack-manager reconciling; config/samples applied; the objects and
#     their conditions printed; the invalid samples refused by the API server;
#  3. the session engine (hoststack-agent --standalone) with two app processes
#     attached — an echo server and a client — exchanging bytes over a
#     cut-through session in shared memory;
#  4. a clean stop of everything it started (by PID), exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

work=$(mktemp -d -t hoststack-demo-XXXXXX)
pids=()
cleanup() {
	local rc=$?
	# Stop in reverse start order, each by the PID we started, and wait.
	for ((i=${#pids[@]}-1; i>=0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	rm -rf "$work"
	if ((rc == 0)); then say "stopped cleanly"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for_line FILE PATTERN SECONDS: wait until a process's log says it is ready.
wait_for_line() {
	local file=$1 pat=$2 secs=$3 i
	for ((i=0; i<secs*10; i++)); do
		grep -q -- "$pat" "$file" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "--- $file:" >&2; tail -20 "$file" >&2 || true
	die "timed out after ${secs}s waiting for '$pat' in $file"
}

say "building"
go build -o bin/ ./cmd/... ./hack/localcluster
go build -o bin/echo-server ./examples/echo/server
go build -o bin/echo-client ./examples/echo/client

say "control plane (first run builds etcd and kube-apiserver from the Go module proxy, ~10 min)"
assets=$(hack/envtest-assets.sh | tail -1)
kubectl="$assets/kubectl"
export KUBECONFIG="$work/kubeconfig"
bin/localcluster --assets "$assets" --crds config/crd/bases --write-kubeconfig "$KUBECONFIG" \
	--ready-file "$work/cluster.ready" 2>"$work/cluster.log" &
pids+=($!)
wait_for_line "$work/cluster.ready" "http" 120
"$kubectl" version 2>/dev/null | sed 's/^/    /'
"$kubectl" get crd -l '!nope' -o custom-columns=CRD:.metadata.name --no-headers | grep hoststack | sed 's/^/    installed /'

say "hoststack-manager (controllers and the pod webhook, with its own managed certificates)"
# Outside a cluster there is no Service network: the webhook configuration
# calls the manager by URL on loopback, and the managed serving certificate
# also covers 127.0.0.1. The manager fills in the caBundle itself.
"$kubectl" create namespace hoststack-system >/dev/null
sed -e 's|    service:|    url: https://127.0.0.1:9443/mutate-v1-pod|' \
	-e '/      name: hoststack-webhook/d; /      namespace: hoststack-system/d; /      path: \/mutate-v1-pod/d' \
	config/webhook/manifests.yaml | "$kubectl" apply -f - >/dev/null
bin/hoststack-manager --metrics-bind-address=0 --health-probe-bind-address=127.0.0.1:0 \
	--leader-elect=false --webhook-port=9443 --webhook-cert-dir="$work/certs" \
	--webhook-cert-extra-names=127.0.0.1 >"$work/manager.log" 2>&1 &
pids+=($!)
wait_for_line "$work/manager.log" "Starting workers" 60

say "applying config/samples"
"$kubectl" apply -f config/samples/
"$kubectl" wait --for=condition=Ready --timeout=60s appnamespaces,sessionrules,certkeypairs --all \
	|| die "samples did not become Ready"
for kind in appnamespaces sessionrules certkeypairs; do
	echo; "$kubectl" get "$kind" -o wide
done
echo
"$kubectl" get appnamespaces,sessionrules,certkeypairs -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}:{"\n"}{range .status.conditions[*]}    {.type}={.status} ({.reason}) {.message}{"\n"}{end}{end}'

say "pod admission: a pod selected by AppNamespace demo gets the attach volume, mount and env"
for ((i=0; i<100; i++)); do # the manager sets the caBundle right after it starts
	[ -n "$("$kubectl" get mutatingwebhookconfiguration hoststack-pod-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ] && break
	sleep 0.1
done
pod=$("$kubectl" run demo-app --image=registry.invalid/demo-app --labels=hoststack.dev/app-namespace=demo \
	--dry-run=server -o jsonpath='    volume {.spec.volumes[?(@.name=="hoststack")].csi}{"\n"}    mount  {.spec.containers[0].volumeMounts[?(@.name=="hoststack")].mountPath}{"\n"}    env    {range .spec.containers[0].env[*]}{.name}={.value} {end}{"\n"}    annotation hoststack.dev/injected={.metadata.annotations.hoststack\.dev/injected}{"\n"}')
echo "$pod" | grep -q 'csi.hoststack.dev' || die "the webhook did not inject the pod: $pod"
echo "$pod"
pod=$("$kubectl" run other-app --image=registry.invalid/other --labels=app=other --dry-run=server -o json)
if echo "$pod" | grep -q csi.hoststack.dev; then die "an unselected pod was injected"; fi
echo "    a pod no AppNamespace selects is left unchanged"

say "applying the invalid samples: the API server must refuse each, naming the field"
refused=0
for f in config/samples/invalid/*.yaml; do
	if out=$("$kubectl" apply -f "$f" 2>&1); then
		die "$f was accepted: $out"
	fi
	refused=$((refused+1))
	printf '    %s\n      %s\n' "$f" "$out"
done
echo "    $refused invalid objects refused"

say "session engine (standalone) with two apps attached"
run="$work/run"
bin/hoststack-agent --standalone --config examples/echo/config --run-dir "$run" >"$work/agent.log" 2>&1 &
pids+=($!)
wait_for_line "$work/agent.log" "msg=ready" 30
export HOSTSTACK_SOCKET="$run/default/echo/session.sock"
echo "    attach socket: $HOSTSTACK_SOCKET"
bin/echo-server -listen 127.0.0.1:7000 >"$work/server.log" 2>&1 &
pids+=($!)
wait_for_line "$work/server.log" "listening on" 30
echo "    echo server (pid ${pids[-1]}) $(head -1 "$work/server.log")"
bin/echo-client -to 127.0.0.1:7000 -msg "hello through shared memory" | sed 's/^/    /'
bin/echo-client -to 127.0.0.1:7000 -bytes $((8<<20)) | sed 's/^/    /'
if bin/echo-client -to 127.0.0.1:7001 2>"$work/refused.log"; then die "dial to a port nobody listens on succeeded"; fi
echo "    nothing on :7001 -> $(cat "$work/refused.log")"
bin/echo-server -listen 127.0.0.1:7002 >"$work/server2.log" 2>&1 &
pids+=($!)
wait_for_line "$work/server2.log" "listening on" 30
if bin/echo-client -to 127.0.0.1:7002 2>"$work/denied.log"; then die "dial to :7002 succeeded despite the Deny rule"; fi
echo "    a server on :7002, but a SessionRule denies it -> $(cat "$work/denied.log")"
echo "    the rules the engine enforces (hoststack-agent rules):"
bin/hoststack-agent rules --run-dir "$run" | sed 's/^/      /'
