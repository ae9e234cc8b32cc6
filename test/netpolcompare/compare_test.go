package netpolcompare

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/hoststack/hoststack/agent/netpol"
)

var (
	seed  = flag.Uint64("seed", 20261207, "seed of the generated cases")
	cases = flag.Int("cases", 3000, "how many generated cases")
)

// world is one generated case: namespaces, the node's pods, policies.
type world struct {
	namespaces []corev1.Namespace
	pods       []corev1.Pod
	policies   []networkingv1.NetworkPolicy
}

var (
	nsNames   = []string{"x", "y", "z"}
	labelKeys = []string{"app", "tier", "team"}
	labelVals = []string{"a", "b", "c"}
	protos    = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	// container ports to draw from: the same name on different numbers
	// and protocols makes named ports resolve per destination pod
	containerPorts = []corev1.ContainerPort{
		{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
		{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
		{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
		{Name: "sctp", ContainerPort: 9000, Protocol: corev1.ProtocolSCTP},
		{Name: "https", ContainerPort: 443}, // protocol defaults to TCP
		{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
	}
	portNames   = []string{"http", "dns", "sctp", "https", "metrics", "nope"}
	portNumbers = []int32{53, 80, 81, 443, 8080, 9000, 9090}
)

// objLabels are a pod's or namespace's labels: always an "app" (see
// randSelector's NotIn), and up to max more.
func objLabels(r *rand.Rand, max int) map[string]string {
	m := randLabels(r, max)
	if _, ok := m["app"]; !ok {
		m["app"] = labelVals[r.IntN(len(labelVals))]
	}
	return m
}

func randLabels(r *rand.Rand, max int) map[string]string {
	m := map[string]string{}
	for range r.IntN(max + 1) {
		m[labelKeys[r.IntN(len(labelKeys))]] = labelVals[r.IntN(len(labelVals))]
	}
	return m
}

func randSelector(r *rand.Rand) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	switch r.IntN(4) {
	case 0: // empty: everything
	case 1:
		s.MatchLabels = randLabels(r, 2)
	default:
		for range 1 + r.IntN(2) {
			e := metav1.LabelSelectorRequirement{Key: labelKeys[r.IntN(len(labelKeys))]}
			switch r.IntN(4) {
			case 0:
				e.Operator = metav1.LabelSelectorOpIn
				e.Values = []string{labelVals[r.IntN(3)], labelVals[r.IntN(3)]}
			case 1:
				// Cyclonus' NotIn does not match objects without the key,
				// Kubernetes' does (labels.Selector, which agent/netpol
				// uses): NotIn only on "app", which every pod and
				// namespace carries here; the agent/netpol tests cover
				// the missing key.
				e.Key = "app"
				e.Operator = metav1.LabelSelectorOpNotIn
				e.Values = []string{labelVals[r.IntN(3)]}
			case 2:
				e.Operator = metav1.LabelSelectorOpExists
			default:
				e.Operator = metav1.LabelSelectorOpDoesNotExist
			}
			s.MatchExpressions = append(s.MatchExpressions, e)
		}
		if r.IntN(3) == 0 {
			s.MatchLabels = randLabels(r, 1)
		}
	}
	return s
}

func podIP(i int, v6 bool) string {
	if v6 {
		return fmt.Sprintf("fd00::%x", 10+i)
	}
	return fmt.Sprintf("10.0.%d.%d", i/4, 10+i)
}

func randBlock(r *rand.Rand, npods int) *networkingv1.IPBlock {
	v6 := r.IntN(4) == 0
	i := r.IntN(npods)
	var b networkingv1.IPBlock
	if v6 {
		b.CIDR = []string{"fd00::/64", "fd00::/120", podIP(i, true) + "/128", "::/0"}[r.IntN(4)]
		if r.IntN(2) == 0 {
			b.Except = []string{podIP(r.IntN(npods), true) + "/128"}
		}
		return &b
	}
	b.CIDR = []string{"10.0.0.0/16", "10.0.0.0/24", "10.0.1.0/24", podIP(i, false) + "/32", "0.0.0.0/0", "10.0.0.0/23"}[r.IntN(6)]
	if r.IntN(2) == 0 {
		for range 1 + r.IntN(2) {
			b.Except = append(b.Except, []string{podIP(r.IntN(npods), false) + "/32", "10.0.1.0/25", "10.0.0.0/28"}[r.IntN(3)])
		}
	}
	// except must be inside cidr: drop those that are not
	cidr := netip.MustParsePrefix(b.CIDR)
	var keep []string
	for _, e := range b.Except {
		ep := netip.MustParsePrefix(e)
		if cidr.Contains(ep.Addr()) && ep.Bits() > cidr.Bits() {
			keep = append(keep, e)
		}
	}
	b.Except = keep
	return &b
}

func randPorts(r *rand.Rand) []networkingv1.NetworkPolicyPort {
	var ps []networkingv1.NetworkPolicyPort
	for range r.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		if r.IntN(3) > 0 {
			p.Protocol = ptr.To(protos[r.IntN(3)])
		}
		switch r.IntN(4) {
		case 0: // every port of the protocol
		case 1:
			p.Port = ptr.To(intstr.FromString(portNames[r.IntN(len(portNames))]))
		case 2:
			p.Port = ptr.To(intstr.FromInt32(portNumbers[r.IntN(len(portNumbers))]))
		default:
			lo := portNumbers[r.IntN(len(portNumbers))]
			p.Port = ptr.To(intstr.FromInt32(lo))
			p.EndPort = ptr.To(lo + int32(r.IntN(9000)))
		}
		ps = append(ps, p)
	}
	return ps
}

func randPeers(r *rand.Rand, npods int) []networkingv1.NetworkPolicyPeer {
	var ps []networkingv1.NetworkPolicyPeer
	for range r.IntN(3) {
		var p networkingv1.NetworkPolicyPeer
		switch r.IntN(4) {
		case 0:
			p.PodSelector = randSelector(r)
		case 1:
			p.NamespaceSelector = randSelector(r)
		case 2:
			p.PodSelector, p.NamespaceSelector = randSelector(r), randSelector(r)
		default:
			p.IPBlock = randBlock(r, npods)
		}
		ps = append(ps, p)
	}
	return ps
}

func generate(r *rand.Rand) world {
	var w world
	for _, n := range nsNames {
		l := objLabels(r, 2)
		l["kubernetes.io/metadata.name"] = n
		w.namespaces = append(w.namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: l}})
	}
	npods := 3 + r.IntN(5)
	for i := range npods {
		p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Namespace: nsNames[r.IntN(len(nsNames))], Name: fmt.Sprintf("p%d", i),
			UID: types.UID(fmt.Sprintf("uid-%d", i)), Labels: objLabels(r, 3)}}
		c := corev1.Container{Name: "c"}
		seen := map[string]bool{}
		for range r.IntN(4) {
			cp := containerPorts[r.IntN(len(containerPorts))]
			k := fmt.Sprint(cp.ContainerPort, cp.Protocol)
			if cp.Protocol == "" {
				k = fmt.Sprint(cp.ContainerPort, corev1.ProtocolTCP)
			}
			if seen[k] || seen[cp.Name] {
				continue // one name and one port/protocol per pod, as validation wants
			}
			seen[k], seen[cp.Name] = true, true
			c.Ports = append(c.Ports, cp)
		}
		p.Spec.Containers = []corev1.Container{c}
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIPs = []corev1.PodIP{{IP: podIP(i, false)}, {IP: podIP(i, true)}}
		w.pods = append(w.pods, p)
	}
	for i := range r.IntN(6) {
		np := networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: nsNames[r.IntN(len(nsNames))], Name: fmt.Sprintf("np%d", i)}}
		np.Spec.PodSelector = *randSelector(r)
		switch r.IntN(3) {
		case 0:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		case 1:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		default:
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}
		for range r.IntN(3) {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: randPorts(r), From: randPeers(r, npods)})
		}
		for range r.IntN(3) {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: randPorts(r), To: randPeers(r, npods)})
		}
		w.policies = append(w.policies, np)
	}
	return w
}

// portName is the destination's container port name for (n, proto).
func portName(p *corev1.Pod, n int32, proto corev1.Protocol) string {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			pr := cp.Protocol
			if pr == "" {
				pr = corev1.ProtocolTCP
			}
			if cp.ContainerPort == n && pr == proto {
				return cp.Name
			}
		}
	}
	return ""
}

func (w world) String() string {
	var b strings.Builder
	for _, o := range []any{w.namespaces, w.pods, w.policies} {
		y, _ := yaml.Marshal(o)
		b.Write(y)
		b.WriteString("---\n")
	}
	return b.String()
}

// TestAgainstCyclonus generates cases (seeded, reproducible with -seed)
// and compares every decision of agent/netpol with Cyclonus' matcher:
// every ordered pair of distinct pods, both address families, every port
// the policies or pods name (and one nobody names) on each protocol.
func TestAgainstCyclonus(t *testing.T) {
	r := rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15))
	decisions, denied := 0, 0
	for c := range *cases {
		w := generate(r)
		table, problems := netpol.Render(w.pods, w.namespaces, w.policies)
		if len(problems) > 0 {
			t.Fatalf("case %d: render problems %v\n%s", c, problems, w)
		}
		ptrs := make([]*networkingv1.NetworkPolicy, len(w.policies))
		for i := range w.policies {
			ptrs[i] = &w.policies[i]
		}
		ref := matcher.BuildNetworkPolicies(false, ptrs)
		nsLabels := map[string]map[string]string{}
		for _, n := range w.namespaces {
			nsLabels[n.Name] = n.Labels
		}
		for si := range w.pods {
			for di := range w.pods {
				if si == di {
					continue
				}
				src, dst := &w.pods[si], &w.pods[di]
				for fam := range 2 {
					sip := netip.MustParseAddr(src.Status.PodIPs[fam].IP)
					dip := netip.MustParseAddr(dst.Status.PodIPs[fam].IP)
					for _, proto := range protos {
						for _, n := range append(portNumbers, 12345) {
							got := table.Decide(netpol.Session{SrcUID: string(src.UID), DstUID: string(dst.UID), Src: sip, Dst: dip, Proto: proto, Port: n})
							traffic := &matcher.Traffic{
								Source:           &matcher.TrafficPeer{IP: sip.String(), Internal: &matcher.InternalPeer{PodLabels: src.Labels, NamespaceLabels: nsLabels[src.Namespace], Namespace: src.Namespace}},
								Destination:      &matcher.TrafficPeer{IP: dip.String(), Internal: &matcher.InternalPeer{PodLabels: dst.Labels, NamespaceLabels: nsLabels[dst.Namespace], Namespace: dst.Namespace}},
								ResolvedPort:     int(n),
								ResolvedPortName: portName(dst, n, proto),
								Protocol:         proto,
							}
							want := ref.IsTrafficAllowed(traffic)
							decisions++
							if !got.Allowed {
								denied++
							}
							if got.Allowed != want.IsAllowed() || (!got.Allowed && got.Denied == netpol.Egress) != !want.Egress.IsAllowed() {
								t.Fatalf("case %d (seed %d): %s/%s (%s) -> %s/%s (%s) %s/%d (name %q): hoststack %+v (%s), cyclonus ingress=%v egress=%v\n%s\ncase:\n%s",
									c, *seed, src.Namespace, src.Name, sip, dst.Namespace, dst.Name, dip, proto, n, traffic.ResolvedPortName,
									got, got.Reason(netpol.Session{Src: sip, Dst: dip, Proto: proto, Port: n}),
									want.Ingress.IsAllowed(), want.Egress.IsAllowed(), want.Table(), w)
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d cases, %d decisions agreed (%d denied)", *cases, decisions, denied)
	if denied == 0 || denied == decisions {
		t.Fatalf("the generator is degenerate: %d of %d decisions denied", denied, decisions)
	}
}
