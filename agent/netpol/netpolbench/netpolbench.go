// Package netpolbench measures agent/netpol at cluster scale: a node of 110
// pods (the kubelet's default maximum) in 20 of 100 namespaces, and 10,000
// NetworkPolicies spread over all 100 namespaces (100 each, so the 2,000 of
// the node's namespaces select its pods). Each policy selects pods by an
// "app" label (1 in 4 selects every pod of its namespace), is Ingress (60%),
// Egress (20%) or both, and has 1–3 rules of 1–2 peers: a podSelector
// (40%), a namespaceSelector (20%), both (20%) or an ipBlock with an except
// (20%), on 0–2 ports (numbers, named ports, ranges with endPort).
//
// Decide is timed on sessions between random pairs of the node's pods and
// ports drawn from the same ports the policies name, so lookups end
// allowed and dropped, at every depth.
package netpolbench

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/hoststack/hoststack/agent/netpol"
)

// World is a generated node.
type World struct {
	Pods       []corev1.Pod
	Namespaces []corev1.Namespace
	Policies   []networkingv1.NetworkPolicy
}

var apps = []string{"web", "api", "db", "cache", "queue", "worker", "auth", "search"}

// Generate makes a node with npods pods and npolicies policies.
func Generate(npods, npolicies int, seed uint64) World {
	r := rand.New(rand.NewPCG(seed, seed+1))
	var w World
	for i := range 100 {
		w.Namespaces = append(w.Namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i%10), "env": []string{"prod", "dev"}[i%2]}}})
	}
	for i := range npods {
		w.Pods = append(w.Pods, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", r.IntN(20)), Name: fmt.Sprintf("p%d", i),
				UID: types.UID(fmt.Sprintf("uid-%d", i)), Labels: map[string]string{"app": apps[r.IntN(len(apps))]}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: int32(8000 + r.IntN(4))}, {Name: "metrics", ContainerPort: 9090}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: podIP(i)}}},
		})
	}
	sel := func() *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": apps[r.IntN(len(apps))]}}
	}
	for i := range npolicies {
		np := networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", i%100), Name: fmt.Sprintf("np%d", i)}}
		if r.IntN(4) > 0 {
			np.Spec.PodSelector = *sel()
		}
		in, out := true, false
		switch x := r.IntN(10); {
		case x >= 8:
			in, out = false, true
		case x >= 6:
			out = true
		}
		for range 1 + r.IntN(3) {
			var peers []networkingv1.NetworkPolicyPeer
			for range 1 + r.IntN(2) {
				switch x := r.IntN(10); {
				case x < 4:
					peers = append(peers, networkingv1.NetworkPolicyPeer{PodSelector: sel()})
				case x < 6:
					peers = append(peers, networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", r.IntN(10))}}})
				case x < 8:
					peers = append(peers, networkingv1.NetworkPolicyPeer{PodSelector: sel(), NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}})
				default:
					peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
						CIDR: fmt.Sprintf("10.%d.0.0/16", r.IntN(4)), Except: []string{podIP(r.IntN(npods)) + "/32"}}})
				}
			}
			var ports []networkingv1.NetworkPolicyPort
			for range r.IntN(3) {
				switch r.IntN(3) {
				case 0:
					ports = append(ports, networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(int32(8000 + r.IntN(4))))})
				case 1:
					ports = append(ports, networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromString([]string{"http", "metrics"}[r.IntN(2)]))})
				default:
					lo := int32(8000 + r.IntN(100))
					ports = append(ports, networkingv1.NetworkPolicyPort{Port: ptr.To(intstr.FromInt32(lo)), EndPort: ptr.To(lo + int32(r.IntN(1000)))})
				}
			}
			if in {
				np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
			}
			if out {
				np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
			}
		}
		if in {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		}
		if out {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
		w.Policies = append(w.Policies, np)
	}
	return w
}

func podIP(i int) string { return fmt.Sprintf("10.%d.%d.%d", i%4, (i/4)%256, 1+i%250) }

// Sessions draws n sessions between distinct pods of w.
func Sessions(w World, n int, seed uint64) []netpol.Session {
	r := rand.New(rand.NewPCG(seed, seed+7))
	out := make([]netpol.Session, n)
	for i := range out {
		a, b := r.IntN(len(w.Pods)), r.IntN(len(w.Pods)-1)
		if b >= a {
			b++
		}
		out[i] = netpol.Session{SrcUID: string(w.Pods[a].UID), DstUID: string(w.Pods[b].UID),
			Src: netip.MustParseAddr(w.Pods[a].Status.PodIPs[0].IP), Dst: netip.MustParseAddr(w.Pods[b].Status.PodIPs[0].IP),
			Proto: corev1.ProtocolTCP, Port: int32([]int{8000, 8001, 8002, 8003, 8050, 9090, 443}[r.IntN(7)])}
	}
	return out
}

// Result is one measured case.
type Result struct {
	Case  string
	Value float64
	Unit  string
}

// Run renders 10,000 policies for a 110-pod node and times Decide for
// about d: cases render-10000 (ms), decide-10000 (ns/op), and the table's
// size (entries) and the share of sessions allowed (%).
func Run(d time.Duration) ([]Result, error) {
	w := Generate(110, 10_000, 1)
	start := time.Now()
	t, problems := netpol.Render(w.Pods, w.Namespaces, w.Policies)
	render := time.Since(start)
	if len(problems) > 0 {
		return nil, fmt.Errorf("render: %v", problems[0])
	}
	_, _, entries := t.Counts()
	ss := Sessions(w, 1<<16, 2)
	var n, allowed int
	start = time.Now()
	for time.Since(start) < d {
		for _, s := range ss[n%len(ss) : n%len(ss)+4096] {
			if t.Decide(s).Allowed {
				allowed++
			}
		}
		n += 4096
	}
	el := time.Since(start)
	return []Result{
		{"render-10000", float64(render.Microseconds()) / 1000, "ms"},
		{"decide-10000", float64(el.Nanoseconds()) / float64(n), "ns/op"},
		{"entries-10000", float64(entries), "entries"},
		{"allowed-10000", 100 * float64(allowed) / float64(n), "%"},
	}, nil
}
