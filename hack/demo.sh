#!/usr/bin/env bash
# make demo: hoststack end to end on this machine, no cluster and no Docker.
#
#  1. a real control plane (etcd + kube-apiserver built from the Go module
#     proxy by hack/envtest-assets.sh) with the hoststack CRDs installed;
#  2. hoststack-manager reconciling; config/samples applied; the objects and
#     their conditions printed; the invalid samples refused by the API server;
#  3. the node agent (hoststack-agent, Kubernetes mode) on node demo-node, and
#     two pods made as the kubelet would make them (a network namespace, the
#     CNI ADD through the real hoststack-cni plugin, a per-pod attach socket)
#     with an app in each: a cut-through session between them, a session to a
#     plain kernel server outside through the kernel transport (from the
#     pod's own address) and one from outside into a pod; a SessionRule
#     applied with kubectl that denies; the statuses;
#  4. a clean stop of everything it started (by PID), exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

work=$(mktemp -d -t hoststack-demo-XXXXXX)
pids=()
netns=()
cleanup() {
	local rc=$?
	# Stop in reverse start order, each by the PID we started, and wait.
	for ((i=${#pids[@]}-1; i>=0; i--)); do
		kill -TERM "${pids[i]}" 2>/dev/null || true
		wait "${pids[i]}" 2>/dev/null || true
	done
	for ns in "${netns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
	if ((rc != 0)); then # keep the components' logs for whoever looks next
		rm -rf bin/demo-logs && mkdir -p bin/demo-logs && cp "$work"/*.log bin/demo-logs/ 2>/dev/null || true
		echo "demo: logs kept in bin/demo-logs" >&2
	fi
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

say "applying config/samples; opting namespace default in to the pod webhook"
"$kubectl" apply -f config/samples/
"$kubectl" label namespace default hoststack.dev/webhook=enabled >/dev/null
# No agent runs yet: an AppNamespace is valid but not Ready (no live node
# serves it), a SessionRule accepted but not yet enforced.
"$kubectl" wait --for=condition=Valid --timeout=60s appnamespaces --all \
	&& "$kubectl" wait --for=condition=Accepted --timeout=60s sessionrules --all \
	&& "$kubectl" wait --for=condition=Ready --timeout=60s certkeypairs --all \
	|| die "samples were not accepted"
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

say "node agent on node demo-node (Kubernetes mode): per-pod sockets, CNI server, kernel transport"
[ "$(id -u)" = 0 ] || die "the rest needs root: pods are real network namespaces (ip netns)"
"$kubectl" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: demo-node, labels: {kubernetes.io/hostname: demo-node}}
EOF
# The world outside the node is a network namespace of its own; eth1 of
# namespace $edge stands for a second node NIC, on which an Interface-mode
# AppNamespace runs its userspace stack (--interface-netns).
mkns() { ip netns add "$1"; netns+=("$1"); ip -n "$1" link set lo up; }
world=hs-demo-world-$$
mkns "$world"
edge=hs-demo-edge-$$
mkns "$edge"
ip link add "hsde-$$" netns "$world" type veth peer name eth1 netns "$edge"
ip -n "$world" addr add 10.98.3.254/24 dev "hsde-$$"
ip -n "$world" link set "hsde-$$" up
ip -n "$edge" link set eth1 up
# The agent renews its node Lease in its namespace; the manager counts
# the node as serving while it is fresh.
"$kubectl" create namespace hoststack-node >/dev/null
bin/hoststack-agent --node-name demo-node --run-dir "$work/run" --status-interval 1s \
	--metrics-bind-address 0 --health-probe-bind-address 0 \
	--csi --csi-socket "$work/csi/csi.sock" --csi-registry-dir "$work/csi-registry" \
	--hostpath-sockets-dir "$work/pods" \
	--cni --cni-socket "$work/cni.sock" --cni-state-dir "$work/cni-state" --cni-pending-dir "$work/cni-pending" \
	--transport kernel --interface-netns "/var/run/netns/$edge" >"$work/agent.log" 2>&1 &
pids+=($!)
wait_for_line "$work/agent.log" "ready: configuration applied" 60
echo "    agent (pid ${pids[-1]}) ready; it serves: $("$kubectl" get sessionnode demo-node -o jsonpath='{range .status.appNamespaces[*]}{.namespace}/{.name}={.state} {end}')"

say "two pods as the kubelet would make them: a network namespace, the CNI ADD, the attach socket"
# Pod network: client-0 10.98.1.1 and web-0 10.98.2.1, each on a veth to a
# third namespace standing for the world outside the node (10.98.N.254),
# where a plain kernel echo server listens.
wire_pod() { # wire_pod POD-NETNS N: eth0 10.98.N.1 <-> world 10.98.N.254
	ip link add "hsd$2-$$" netns "$world" type veth peer name eth0 netns "$1"
	ip -n "$1" addr add "10.98.$2.1/24" dev eth0
	ip -n "$1" link set eth0 up
	ip -n "$world" addr add "10.98.$2.254/24" dev "hsd$2-$$"
	ip -n "$world" link set "hsd$2-$$" up
}
cni_add() { # cni_add POD NETNS IP: what the container runtime runs after the main plugin
	local uid
	uid=$("$kubectl" get pod "$1" -o jsonpath='{.metadata.uid}')
	printf '%s' "{\"cniVersion\": \"1.1.0\", \"name\": \"podnet\", \"type\": \"hoststack-cni\",
 \"agentSocket\": \"$work/cni.sock\", \"pendingDir\": \"$work/cni-pending\",
 \"prevResult\": {\"cniVersion\": \"1.1.0\", \"interfaces\": [{\"name\": \"eth0\", \"sandbox\": \"/var/run/netns/$2\"}],
                \"ips\": [{\"interface\": 0, \"address\": \"$3/24\"}]}}" |
	CNI_COMMAND=ADD CNI_CONTAINERID="sandbox-$1" CNI_NETNS="/var/run/netns/$2" CNI_IFNAME=eth0 CNI_PATH="$PWD/bin" \
		CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$1;K8S_POD_UID=$uid" bin/hoststack-cni >/dev/null \
		|| die "CNI ADD of pod $1 failed"
	echo "    pod $1 (uid $uid): network namespace $2, $3; CNI ADD told the agent"
}
n=1
for pod in client-0 web-0; do
	mkns "hs-demo-$pod-$$"
	wire_pod "hs-demo-$pod-$$" $n
	"$kubectl" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: default, labels: {hoststack.dev/app-namespace: demo}}
spec: {nodeName: demo-node, containers: [{name: app, image: registry.invalid/$pod}]}
EOF
	cni_add "$pod" "hs-demo-$pod-$$" "10.98.$n.1"
	n=$((n+1))
done
for pod in client-0 web-0; do
	sock="$work/pods/default/$pod/session.sock"
	for ((i=0; i<100; i++)); do [ -S "$sock" ] && break; sleep 0.1; done
	[ -S "$sock" ] || die "no attach socket for pod $pod"
	echo "    pod $pod's attach socket: $sock"
done
# inpod POD CMD...: run CMD as a container of POD would: in its network
# namespace, with the socket the pod webhook's env points at.
inpod() {
	local pod=$1
	shift
	ip netns exec "hs-demo-$pod-$$" env HOSTSTACK_SOCKET="$work/pods/default/$pod/session.sock" "$@"
}

say "the apps: an echo server in web-0, a client in client-0, a plain kernel server outside"
inpod web-0 bin/echo-server -listen :7000 >"$work/web.log" 2>&1 &
pids+=($!)
wait_for_line "$work/web.log" "listening on" 30
echo "    web-0: echo server (pid ${pids[-1]}) $(head -1 "$work/web.log")"
ip netns exec "$world" bin/echo-server -kernel -listen 10.98.1.254:7100 >"$work/world.log" 2>&1 &
pids+=($!)
wait_for_line "$work/world.log" "listening on" 30
echo "    outside: kernel echo server (pid ${pids[-1]}) $(head -1 "$work/world.log")"

echo "    client-0 -> web-0's pod address: cut-through, the bytes move through shared memory only"
inpod client-0 bin/echo-client -to 10.98.2.1:7000 -bytes $((8<<20)) | sed 's/^/      /'
echo "    client-0 -> the server outside: kernel transport, a socket in client-0's network namespace"
inpod client-0 bin/echo-client -to 10.98.1.254:7100 -msg "hello, world outside" | sed 's/^/      /'
wait_for_line "$work/world.log" "session from 10.98.1.1:" 10
echo "      the server outside saw: $(grep 'session from' "$work/world.log" | tail -1 | sed 's/^echo-server: //')"
echo "    outside -> web-0: its listener listens in web-0's network namespace too (global scope)"
ip netns exec "$world" bin/echo-client -kernel -to 10.98.2.1:7000 -msg "hello, pod" | sed 's/^/      /'

say "a SessionRule that denies: kubectl apply, and client-0's next connect out is refused"
"$kubectl" apply -f - <<EOF
apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: demo-no-outside-echo}
spec:
  appNamespaceRef: {name: demo}
  scope: Global
  transport: TCP
  local: {cidr: 0.0.0.0/0, port: 0}
  remote: {cidr: 10.98.1.254/32, port: 7100}
  action: {type: Deny}
EOF
denied=
for ((i=0; i<50; i++)); do
	if ! inpod client-0 bin/echo-client -to 10.98.1.254:7100 >/dev/null 2>"$work/denied.log" &&
		grep -q "denied by SessionRule default/demo-no-outside-echo" "$work/denied.log"; then
		denied=1
		break
	fi
	sleep 0.1
done
[ -n "$denied" ] || die "the deny rule did not take effect: $(cat "$work/denied.log")"
echo "    $(cat "$work/denied.log")"
inpod client-0 bin/echo-client -to 10.98.2.1:7000 -msg "cut-through to web-0 is still allowed" | sed 's/^/    /'

say "TLS with the CertKeyPair demo-tls: the engine speaks TLS, the apps read and write plaintext"
# The agent loads the pair from the copy the manager publishes for it, which
# can reach the agent's cache after its first configuration: wait until the
# node reports the pair loaded, as a pod's readiness would.
"$kubectl" wait --for=jsonpath='{.status.certKeyPairs}'=1 --timeout=30s sessionnode/demo-node >/dev/null \
	|| die "the agent did not load CertKeyPair demo-tls: $("$kubectl" get sessionnode demo-node -o jsonpath='{.status.errors}')"
inpod web-0 bin/echo-server -name echo-tls -listen :7443 -tls demo-tls >"$work/web-tls.log" 2>&1 &
pids+=($!)
wait_for_line "$work/web-tls.log" "listening on" 30
echo "    web-0: TLS echo server (pid ${pids[-1]}) $(head -1 "$work/web-tls.log")"
echo "    client-0 -> web-0 with TLS: the engine runs the handshake between both configurations, then cut-through"
inpod client-0 bin/echo-client -to 10.98.2.1:7443 -tls-server-name demo.hoststack.example -tls-trust demo-tls \
	-msg "verified by TLS, carried by shared memory" | sed 's/^/      /'
echo "    a stock crypto/tls client outside -> web-0: TLS on the wire, through the kernel transport"
"$kubectl" get secret demo-tls -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/demo-ca.pem"
ip netns exec "$world" bin/echo-client -kernel -to 10.98.2.1:7443 -tls-server-name demo.hoststack.example \
	-tls-ca "$work/demo-ca.pem" -msg "hello over TLS" | sed 's/^/      /'

say "Interface mode: AppNamespace edge gets a userspace TCP/IP stack (AF_PACKET) on eth1, with its own address"
"$kubectl" apply -f - <<EOF
apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: edge}
spec:
  podSelector: {matchLabels: {hoststack.dev/app-namespace: edge}}
  network:
    mode: Interface
    interface: {name: eth1, vrf: 0, addresses: [10.98.3.10/24], driver: AFPacket}
---
apiVersion: v1
kind: Pod
metadata: {name: edge-0, namespace: default, labels: {hoststack.dev/app-namespace: edge}}
spec: {nodeName: demo-node, containers: [{name: app, image: registry.invalid/edge-0}]}
EOF
sock="$work/pods/default/edge-0/session.sock"
for ((i=0; i<100; i++)); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || die "no attach socket for pod edge-0"
wait_for_line "$work/agent.log" "userspace stack of default/edge on eth1" 30
echo "    $(grep -o 'userspace stack of default/edge[^"]*' "$work/agent.log" | head -1)"
ip netns exec "$world" bin/echo-server -kernel -listen 10.98.3.254:7200 >"$work/world-edge.log" 2>&1 &
pids+=($!)
wait_for_line "$work/world-edge.log" "listening on" 30
HOSTSTACK_SOCKET="$sock" bin/echo-client -to 10.98.3.254:7200 -bytes $((4<<20)) | sed 's/^/    /'
wait_for_line "$work/world-edge.log" "session from 10.98.3.10:" 10
echo "    the server outside saw: $(grep 'session from' "$work/world-edge.log" | tail -1 | sed 's/^echo-server: //') (the stack's own address)"

say "statuses"
"$kubectl" get sessionnodes -o wide
echo
"$kubectl" get sessionnode demo-node -o jsonpath='    engine {.status.engine.state}, transport {.status.transport.type} {.status.transport.state}, rulesGeneration {.status.rulesGeneration}, certKeyPairs loaded {.status.certKeyPairs}{"\n"}{range .status.appNamespaces[*]}    appNamespace {.namespace}/{.name}: {.state}, transport {.transport}, rules {.rules}{"\n"}{end}'
echo
"$kubectl" get appnamespaces,sessionrules -o wide
