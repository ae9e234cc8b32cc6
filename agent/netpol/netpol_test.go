package netpol

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

func pod(ns, name, ip string, lbl map[string]string, ports ...corev1.ContainerPort) corev1.Pod {
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), Labels: lbl},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func namespace(name string, lbl map[string]string) corev1.Namespace {
	return corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl}}
}

func policy(ns, name string, sel map[string]string, types []networkingv1.PolicyType, in []networkingv1.NetworkPolicyIngressRule, out []networkingv1.NetworkPolicyEgressRule) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, PolicyTypes: types, Ingress: in, Egress: out}}
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	both        = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

func podPeer(lbl map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: lbl}}
}

func tcp(p int32) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(p))}
}

func named(name string) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromString(name))}
}

// The node: shop/web and shop/db, ops/prom, and shop/api whose "http" is
// 8080 where web's is 80.
func node() ([]corev1.Pod, []corev1.Namespace) {
	return []corev1.Pod{
			pod("shop", "web", "10.0.0.1", map[string]string{"app": "web"}, corev1.ContainerPort{Name: "http", ContainerPort: 80}),
			pod("shop", "db", "10.0.0.2", map[string]string{"app": "db", "tier": "data"}, corev1.ContainerPort{Name: "pg", ContainerPort: 5432}),
			pod("ops", "prom", "10.0.1.3", map[string]string{"app": "prom"}),
			pod("shop", "api", "10.0.0.4", map[string]string{"app": "api"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080},
				corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}),
		}, []corev1.Namespace{
			namespace("shop", map[string]string{"team": "shop"}),
			namespace("ops", map[string]string{"team": "ops"}),
		}
}

type check struct {
	from, to string // pod names (namespace/name)
	proto    corev1.Protocol
	port     int32
	allowed  bool
	denied   Direction // when refused
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name     string
		policies []networkingv1.NetworkPolicy
		checks   []check
	}{
		{"no policy allows everything", nil, []check{
			{from: "shop/web", to: "shop/db", port: 5432, allowed: true},
			{from: "ops/prom", to: "shop/api", port: 1, allowed: true},
		}},
		{"default-deny ingress isolates every pod of its namespace only", []networkingv1.NetworkPolicy{
			policy("shop", "deny", nil, ingressOnly, nil, nil),
		}, []check{
			{from: "shop/web", to: "shop/db", port: 5432, denied: Ingress},
			{from: "ops/prom", to: "shop/web", port: 80, denied: Ingress},
			{from: "shop/web", to: "ops/prom", port: 9090, allowed: true},
		}},
		{"allow by pod label within the policy's namespace", []networkingv1.NetworkPolicy{
			policy("shop", "db-from-api", map[string]string{"app": "db"}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "api"})}}}, nil),
		}, []check{
			{from: "shop/api", to: "shop/db", port: 5432, allowed: true},
			{from: "shop/web", to: "shop/db", port: 5432, denied: Ingress},
			// a pod labelled app=api in another namespace is not a peer
			{from: "ops/prom", to: "shop/db", port: 5432, denied: Ingress},
		}},
		{"namespace selector, and both selectors together", []networkingv1.NetworkPolicy{
			policy("shop", "from-ops", map[string]string{"app": "web"}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "ops"}}}}}}, nil),
			policy("shop", "from-shop-api", map[string]string{"app": "db"}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}}}}}, nil),
		}, []check{
			{from: "ops/prom", to: "shop/web", port: 80, allowed: true},
			{from: "shop/api", to: "shop/web", port: 80, denied: Ingress},
			{from: "shop/api", to: "shop/db", port: 5432, allowed: true},
			{from: "ops/prom", to: "shop/db", port: 5432, denied: Ingress},
		}},
		{"named port resolves against the destination pod", []networkingv1.NetworkPolicy{
			policy("shop", "http-only", nil, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{named("http")}}}, nil),
		}, []check{
			{from: "ops/prom", to: "shop/web", port: 80, allowed: true},
			{from: "ops/prom", to: "shop/web", port: 8080, denied: Ingress},
			{from: "ops/prom", to: "shop/api", port: 8080, allowed: true},
			{from: "ops/prom", to: "shop/api", port: 80, denied: Ingress},
			{from: "ops/prom", to: "shop/db", port: 5432, denied: Ingress}, // db has no "http"
		}},
		{"named port on egress resolves against the destination too", []networkingv1.NetworkPolicy{
			policy("ops", "prom-out", nil, egressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{named("http")}}}),
		}, []check{
			{from: "ops/prom", to: "shop/api", port: 8080, allowed: true},
			{from: "ops/prom", to: "shop/web", port: 8080, denied: Egress},
		}},
		{"endPort range, and protocols apart", []networkingv1.NetworkPolicy{
			policy("shop", "range", map[string]string{"app": "api"}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
					{Port: ptr.To(intstr.FromInt32(8000)), EndPort: ptr.To[int32](8100)},
					{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromString("dns"))},
					{Protocol: ptr.To(corev1.ProtocolSCTP)}}}}, nil),
		}, []check{
			{from: "shop/web", to: "shop/api", port: 8000, allowed: true},
			{from: "shop/web", to: "shop/api", port: 8100, allowed: true},
			{from: "shop/web", to: "shop/api", port: 8101, denied: Ingress},
			{from: "shop/web", to: "shop/api", port: 7999, denied: Ingress},
			{from: "shop/web", to: "shop/api", proto: corev1.ProtocolUDP, port: 8080, denied: Ingress},
			{from: "shop/web", to: "shop/api", proto: corev1.ProtocolUDP, port: 53, allowed: true},
			{from: "shop/web", to: "shop/api", port: 53, denied: Ingress}, // "dns" is UDP only
			{from: "shop/web", to: "shop/api", proto: corev1.ProtocolSCTP, port: 1, allowed: true},
		}},
		{"egress-only policy leaves ingress open", []networkingv1.NetworkPolicy{
			policy("shop", "web-out", map[string]string{"app": "web"}, egressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "db"})}, Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}}}),
		}, []check{
			{from: "shop/web", to: "shop/db", port: 5432, allowed: true},
			{from: "shop/web", to: "shop/api", port: 8080, denied: Egress},
			{from: "shop/api", to: "shop/web", port: 80, allowed: true},
		}},
		{"egress and ingress must both allow", []networkingv1.NetworkPolicy{
			policy("shop", "web-out", map[string]string{"app": "web"}, egressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}}}),
			policy("ops", "prom-in", nil, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "web"})}}}, nil),
		}, []check{
			// prom-in's podSelector peer is in ops only: web is not in it
			{from: "shop/web", to: "ops/prom", port: 9090, denied: Ingress},
			{from: "shop/web", to: "shop/db", port: 5432, allowed: true},
		}},
		{"ipBlock with except, matched on the peer's address", []networkingv1.NetworkPolicy{
			policy("shop", "net", map[string]string{"app": "db"}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16", Except: []string{"10.0.0.4/32", "10.0.1.0/24"}}}}}}, nil),
		}, []check{
			{from: "shop/web", to: "shop/db", port: 5432, allowed: true},
			{from: "shop/api", to: "shop/db", port: 5432, denied: Ingress},
			{from: "ops/prom", to: "shop/db", port: 5432, denied: Ingress},
		}},
		{"an except of one policy does not cut another's allow", []networkingv1.NetworkPolicy{
			policy("shop", "net", map[string]string{"app": "db"}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16", Except: []string{"10.0.0.4/32"}}}}}}, nil),
			policy("shop", "api", map[string]string{"app": "db"}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.4/31"}}}}}, nil),
		}, []check{
			{from: "shop/api", to: "shop/db", port: 5432, allowed: true},
		}},
		{"NotIn selects pods without the key (Kubernetes' selectors)", []networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "not-data"}, Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"data"}}}},
				PolicyTypes: ingressOnly}},
		}, []check{
			{from: "ops/prom", to: "shop/web", port: 80, denied: Ingress}, // web has no tier
			{from: "ops/prom", to: "shop/db", port: 5432, allowed: true},
		}},
		{"policyTypes defaults: Ingress, plus Egress with egress rules", []networkingv1.NetworkPolicy{
			policy("shop", "implicit", map[string]string{"app": "web"}, nil, nil,
				[]networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}}}),
		}, []check{
			{from: "shop/web", to: "shop/db", port: 5432, allowed: true},
			{from: "shop/web", to: "shop/api", port: 8080, denied: Egress},
			{from: "shop/api", to: "shop/web", port: 80, denied: Ingress},
		}},
	}
	pods, nss := node()
	uid := map[string]string{}
	ip := map[string]netip.Addr{}
	for _, p := range pods {
		uid[p.Namespace+"/"+p.Name] = string(p.UID)
		ip[p.Namespace+"/"+p.Name] = netip.MustParseAddr(p.Status.PodIPs[0].IP)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, problems := Render(pods, nss, tt.policies)
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			for _, c := range tt.checks {
				if c.proto == "" {
					c.proto = corev1.ProtocolTCP
				}
				s := Session{SrcUID: uid[c.from], DstUID: uid[c.to], Src: ip[c.from], Dst: ip[c.to], Proto: c.proto, Port: c.port}
				d := table.Decide(s)
				if d.Allowed != c.allowed || (!d.Allowed && d.Denied != c.denied) {
					t.Errorf("%s -> %s %s/%d: got %+v (%s), want allowed=%v denied=%v", c.from, c.to, c.proto, c.port, d, d.Reason(s), c.allowed, c.denied)
				}
			}
		})
	}
}

func TestReasonNamesThePolicies(t *testing.T) {
	pods, nss := node()
	table, _ := Render(pods, nss, []networkingv1.NetworkPolicy{
		policy("shop", "deny-b", nil, ingressOnly, nil, nil),
		policy("shop", "deny-a", map[string]string{"app": "db"}, ingressOnly, nil, nil),
	})
	s := Session{SrcUID: "shop-web", DstUID: "shop-db", Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: corev1.ProtocolTCP, Port: 5432}
	d := table.Decide(s)
	want := "NetworkPolicy shop/deny-a, shop/deny-b isolates pod shop/db for ingress and none allows tcp from 10.0.0.1 port 5432"
	if d.Allowed || d.Reason(s) != want {
		t.Fatalf("got %+v %q, want %q", d, d.Reason(s), want)
	}
}

func TestNotSubjects(t *testing.T) {
	pods, nss := node()
	hn := pod("shop", "hostnet", "192.168.0.1", map[string]string{"app": "db"})
	hn.Spec.HostNetwork = true
	done := pod("shop", "done", "10.0.0.9", map[string]string{"app": "db"})
	done.Status.Phase = corev1.PodSucceeded
	table, _ := Render(append(pods, hn, done), nss, []networkingv1.NetworkPolicy{policy("shop", "deny", nil, both, nil, nil)})
	for _, u := range []string{"shop-hostnet", "shop-done", "unknown"} {
		if d := table.Decide(Session{SrcUID: "ops-prom", DstUID: u, Proto: corev1.ProtocolTCP, Port: 1}); !d.Allowed {
			t.Errorf("%s is isolated: %+v", u, d)
		}
	}
}

func TestProblems(t *testing.T) {
	pods, nss := node()
	table, problems := Render(pods, nss, []networkingv1.NetworkPolicy{
		policy("shop", "bad", map[string]string{"app": "db"}, ingressOnly,
			[]networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.300/8"}}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromInt32(9)), EndPort: ptr.To[int32](3)}}},
			}, nil),
	})
	if len(problems) != 2 || !strings.Contains(problems[0].Message, "spec.ingress[0].from[0].ipBlock") || !strings.Contains(problems[1].Message, "spec.ingress[1].ports[0]") {
		t.Fatalf("problems: %+v", problems)
	}
	// the bad rules match nothing: db stays isolated
	s := Session{SrcUID: "shop-web", DstUID: "shop-db", Src: netip.MustParseAddr("10.0.0.1"), Proto: corev1.ProtocolTCP, Port: 9}
	if d := table.Decide(s); d.Allowed {
		t.Fatalf("a bad rule allowed: %+v", d)
	}
}

func TestDump(t *testing.T) {
	pods, nss := node()
	table, _ := Render(pods, nss, []networkingv1.NetworkPolicy{
		policy("shop", "deny", map[string]string{"app": "web"}, ingressOnly, nil, nil),
		policy("shop", "db", map[string]string{"app": "db"}, ingressOnly,
			[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"app": "api"}),
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16", Except: []string{"10.0.1.0/24"}}}},
				Ports: []networkingv1.NetworkPolicyPort{named("pg"), {Port: ptr.To(intstr.FromInt32(6000)), EndPort: ptr.To[int32](6010)}}}}, nil),
	})
	var b strings.Builder
	if err := WriteEntries(&b, table.Dump()); err != nil {
		t.Fatal(err)
	}
	want := `POD       DIRECTION  POLICY     PEERS                                                  PORTS
shop/db   ingress    shop/db    ns=shop pods{app=api}; 10.0.0.0/16 except 10.0.1.0/24  TCP/pg,TCP/6000-6010
shop/web  ingress    shop/deny  (none)                                                 -
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// The enforcer counts drops per app namespace, isolating policy and
// direction, and forgets the series of a policy that is gone.
func TestEnforcerCounts(t *testing.T) {
	pods, nss := node()
	var e Enforcer
	q := session.PeerQuery{Namespace: "shop/app", Proto: wire.TCP, SrcHost: "shop-web", Src: netip.MustParseAddr("10.0.0.1"),
		DstHost: "shop-db", Dst: netip.MustParseAddrPort("10.0.0.2:5432")}
	if v := e.CheckPeer(q); !v.Allowed {
		t.Fatalf("no table yet: %+v", v)
	}
	table, _ := Render(pods, nss, []networkingv1.NetworkPolicy{policy("shop", "deny", nil, ingressOnly, nil, nil)})
	e.Store(table)
	for range 2 {
		if v := e.CheckPeer(q); v.Allowed || !strings.HasPrefix(v.Reason, "NetworkPolicy shop/deny isolates pod shop/db") {
			t.Fatalf("%+v", v)
		}
	}
	key := DropKey{AppNamespace: "shop/app", Policy: "shop/deny", Direction: Ingress}
	if got := e.Drops(); len(got) != 1 || got[key] != 2 {
		t.Fatalf("drops %v", got)
	}
	e.Retain(map[string]bool{"shop/app": true})
	if len(e.Drops()) != 1 {
		t.Fatal("a live series was dropped")
	}
	empty, _ := Render(pods, nss, nil)
	e.Store(empty)
	e.Retain(map[string]bool{"shop/app": true})
	if got := e.Drops(); len(got) != 0 {
		t.Fatalf("the deleted policy's series stays: %v", got)
	}
}
