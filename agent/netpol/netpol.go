// Package netpol compiles Kubernetes NetworkPolicies (networking.k8s.io/v1)
// into a table the session engine consults for the sessions the kernel never
// sees: cut-through sessions between two pods of the node. Render is pure
// (pods, namespaces, policies in; an immutable Table out); Table.Decide
// answers one session with Kubernetes' semantics:
//
//   - a pod is isolated for a direction when any policy of its namespace
//     selects it with that policy type; a pod no policy selects for a
//     direction allows everything in that direction;
//   - a session is allowed only if the source's egress and the
//     destination's ingress both allow it;
//   - an isolated direction allows a session when any rule of any policy
//     selecting the pod for it matches both the peer (podSelector within the
//     policy's namespace, namespaceSelector, both together, or ipBlock with
//     except, matched against the peer pod's address of the session's
//     family) and the port (number, range with endPort, or a name resolved
//     against the destination pod's container ports; protocol TCP unless
//     set);
//   - an empty rule list isolates without allowing; a rule without peers
//     matches every peer, one without ports every port.
//
// Render only knows the pods of one node, and only needs them: both ends of
// a cut-through session are pods of the node running the engine.
package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Direction is a policy type.
type Direction int

// Directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Table is the compiled policy of one node: immutable once rendered.
type Table struct {
	pods     map[string]*podEntry // by pod UID (the engine's host)
	keys     map[string]bool      // the policies rendered, as drop counters name them
	policies int
	admins   int // admin and baseline admin policies selecting a pod
	entries  int
}

type podEntry struct {
	key      string // namespace/name
	ips      []netip.Addr
	ports    []corev1.ContainerPort
	isolated [2]*dirRules // by Direction; nil: not isolated
	// AdminNetworkPolicy rules in precedence order, and the
	// BaselineAdminNetworkPolicy's, by Direction (admin.go)
	admin, baseline [2][]adminRule
}

// dirRules are the rules of every policy selecting a pod for one direction,
// indexed by peer so a lookup only looks at the rules that name the peer.
type dirRules struct {
	isolatedBy []string // policy keys, sorted
	rules      []rule
	anyPeer    []int32            // rules without peers
	byHost     map[string][]int32 // podSelector/namespaceSelector peers, resolved to pod UIDs
	lens       []int              // prefix lengths present in byPrefix
	byPrefix   map[netip.Prefix][]blockRef
}

type blockRef struct {
	rule   int32
	except []netip.Prefix
}

type rule struct {
	policy string
	ports  []port // empty: every port
	peers  []string
}

// port is one NetworkPolicyPort: a protocol and a number range, or a name.
type port struct {
	proto  corev1.Protocol
	lo, hi int32 // lo == 0: every port of proto (when name is "")
	name   string
}

// Problem is a policy the render could not fully compile (the API server
// validates policies, so only objects that bypassed it get here). The bad
// part matches nothing; the rest applies.
type Problem struct {
	Policy  string
	Message string
}

// Render compiles the policies that select the pods given (the node's) into
// a Table. Pods not running (succeeded, failed) and host-network pods are
// neither subjects nor pod peers: NetworkPolicy does not apply to the
// node's own network.
func Render(pods []corev1.Pod, namespaces []corev1.Namespace, policies []networkingv1.NetworkPolicy) (*Table, []Problem) {
	nsLabels := make(map[string]labels.Set, len(namespaces))
	for i := range namespaces {
		nsLabels[namespaces[i].Name] = labels.Set(namespaces[i].Labels)
	}
	t := &Table{pods: map[string]*podEntry{}, keys: map[string]bool{}}
	byNS := map[string][]podRef{}
	var live []podRef
	for i := range pods {
		p := &pods[i]
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.UID == "" {
			continue
		}
		e := &podEntry{key: p.Namespace + "/" + p.Name}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				e.ips = append(e.ips, a.Unmap())
			}
		}
		for _, c := range p.Spec.Containers {
			e.ports = append(e.ports, c.Ports...)
		}
		for _, c := range p.Spec.InitContainers {
			// sidecars (restartable init containers) serve like containers
			if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				e.ports = append(e.ports, c.Ports...)
			}
		}
		t.pods[string(p.UID)] = e
		r := podRef{string(p.UID), p}
		byNS[p.Namespace] = append(byNS[p.Namespace], r)
		live = append(live, r)
	}

	var problems []Problem
	sorted := make([]*networkingv1.NetworkPolicy, 0, len(policies))
	for i := range policies {
		sorted = append(sorted, &policies[i])
	}
	// Deterministic order (rules, dumps and reasons do not depend on the
	// cache's).
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Namespace != sorted[j].Namespace {
			return sorted[i].Namespace < sorted[j].Namespace
		}
		return sorted[i].Name < sorted[j].Name
	})
	for _, np := range sorted {
		key := np.Namespace + "/" + np.Name
		bad := func(format string, args ...any) {
			problems = append(problems, Problem{Policy: key, Message: fmt.Sprintf(format, args...)})
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			bad("spec.podSelector: %v", err)
			continue
		}
		var subjects []string
		for _, r := range byNS[np.Namespace] {
			if sel.Matches(labels.Set(r.pod.Labels)) {
				subjects = append(subjects, r.uid)
			}
		}
		t.policies++
		t.keys[key] = true
		if len(subjects) == 0 {
			continue
		}
		ingress, egress := policyTypes(np)
		// peers resolve to the node's pods once per rule, shared by every
		// subject of the policy
		compile := func(d Direction, i int, ports []networkingv1.NetworkPolicyPort, peers []networkingv1.NetworkPolicyPeer) compiledRule {
			field := fmt.Sprintf("spec.%s[%d]", d, i)
			cr := compiledRule{rule: rule{policy: key}}
			for j, p := range ports {
				pp, err := compilePort(p)
				if err != nil {
					bad("%s.ports[%d]: %v", field, j, err)
					continue
				}
				cr.ports = append(cr.ports, pp)
			}
			if len(ports) > 0 && len(cr.ports) == 0 {
				cr.none = true // every port was bad: the rule matches nothing
			}
			cr.anyPeer = len(peers) == 0
			for j, peer := range peers {
				pf := fmt.Sprintf("%s.%s[%d]", field, map[Direction]string{Ingress: "from", Egress: "to"}[d], j)
				if peer.IPBlock != nil {
					b, err := compileBlock(peer.IPBlock)
					if err != nil {
						bad("%s.ipBlock: %v", pf, err)
						continue
					}
					cr.blocks = append(cr.blocks, b)
					cr.peers = append(cr.peers, blockString(b))
					continue
				}
				hosts, desc, err := resolvePeers(np.Namespace, peer, live, nsLabels)
				if err != nil {
					bad("%s: %v", pf, err)
					continue
				}
				cr.hosts = append(cr.hosts, hosts...)
				cr.peers = append(cr.peers, desc)
			}
			if len(peers) > 0 && len(cr.peers) == 0 {
				cr.none = true
			}
			return cr
		}
		var in, out []compiledRule
		if ingress {
			for i, r := range np.Spec.Ingress {
				in = append(in, compile(Ingress, i, r.Ports, r.From))
			}
		}
		if egress {
			for i, r := range np.Spec.Egress {
				out = append(out, compile(Egress, i, r.Ports, r.To))
			}
		}
		for _, uid := range subjects {
			e := t.pods[uid]
			if ingress {
				t.entries += e.dir(Ingress).add(key, in)
			}
			if egress {
				t.entries += e.dir(Egress).add(key, out)
			}
		}
	}
	for _, e := range t.pods {
		for _, d := range e.isolated {
			if d != nil {
				d.finish()
			}
		}
	}
	return t, problems
}

// policyTypes applies the API server's default when spec.policyTypes is
// empty: Ingress, plus Egress when there are egress rules.
func policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

type podRef struct {
	uid string
	pod *corev1.Pod
}

type compiledRule struct {
	rule
	none    bool // matches nothing (its peers or ports were all invalid)
	anyPeer bool
	hosts   []string
	blocks  []block
}

type block struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

func (e *podEntry) dir(d Direction) *dirRules {
	if e.isolated[d] == nil {
		e.isolated[d] = &dirRules{byHost: map[string][]int32{}, byPrefix: map[netip.Prefix][]blockRef{}}
	}
	return e.isolated[d]
}

// add records that policy isolates the pod in this direction and adds its
// rules; it returns how many index entries that made.
func (dr *dirRules) add(policy string, rules []compiledRule) int {
	dr.isolatedBy = append(dr.isolatedBy, policy)
	n := 0
	for _, cr := range rules {
		if cr.none {
			continue
		}
		idx := int32(len(dr.rules))
		dr.rules = append(dr.rules, cr.rule)
		if cr.anyPeer {
			dr.anyPeer = append(dr.anyPeer, idx)
			n++
		}
		for _, h := range cr.hosts {
			if l := dr.byHost[h]; len(l) == 0 || l[len(l)-1] != idx {
				dr.byHost[h] = append(l, idx)
				n++
			}
		}
		for _, b := range cr.blocks {
			dr.byPrefix[b.cidr] = append(dr.byPrefix[b.cidr], blockRef{rule: idx, except: b.except})
			n++
		}
	}
	return n
}

func (dr *dirRules) finish() {
	seen := map[int]bool{}
	for p := range dr.byPrefix {
		l := p.Bits()
		if p.Addr().Is6() {
			l += 1000 // IPv6 lengths apart from IPv4 ones
		}
		if !seen[l] {
			seen[l] = true
			dr.lens = append(dr.lens, l)
		}
	}
	slices.Sort(dr.lens)
	sort.Strings(dr.isolatedBy)
	dr.isolatedBy = slices.Compact(dr.isolatedBy)
}

// resolvePeers lists the node's pods a podSelector/namespaceSelector peer of
// a policy in namespace ns selects, and describes the peer.
func resolvePeers(ns string, peer networkingv1.NetworkPolicyPeer, pods []podRef, nsLabels map[string]labels.Set) ([]string, string, error) {
	podSel := labels.Everything()
	desc := []string{}
	if peer.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return nil, "", fmt.Errorf("podSelector: %w", err)
		}
		podSel = s
	}
	var nsSel labels.Selector // nil: the policy's own namespace
	if peer.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			return nil, "", fmt.Errorf("namespaceSelector: %w", err)
		}
		nsSel = s
		desc = append(desc, "ns{"+selString(s)+"}")
	} else {
		desc = append(desc, "ns="+ns)
	}
	desc = append(desc, "pods{"+selString(podSel)+"}")
	var hosts []string
	for _, r := range pods {
		if nsSel == nil && r.pod.Namespace != ns {
			continue
		}
		if nsSel != nil && !nsSel.Matches(nsLabels[r.pod.Namespace]) {
			continue
		}
		if podSel.Matches(labels.Set(r.pod.Labels)) {
			hosts = append(hosts, r.uid)
		}
	}
	return hosts, strings.Join(desc, " "), nil
}

func selString(s labels.Selector) string {
	if s.Empty() {
		return "*"
	}
	return s.String()
}

func compilePort(p networkingv1.NetworkPolicyPort) (port, error) {
	pp := port{proto: corev1.ProtocolTCP}
	if p.Protocol != nil {
		pp.proto = *p.Protocol
	}
	switch pp.proto {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		return port{}, fmt.Errorf("protocol %q is not TCP, UDP or SCTP", pp.proto)
	}
	if p.Port == nil {
		if p.EndPort != nil {
			return port{}, fmt.Errorf("endPort %d without port", *p.EndPort)
		}
		return pp, nil
	}
	if p.Port.Type == intstr.String {
		if p.EndPort != nil {
			return port{}, fmt.Errorf("endPort %d with the named port %q", *p.EndPort, p.Port.StrVal)
		}
		if p.Port.StrVal == "" {
			return port{}, fmt.Errorf("empty port name")
		}
		pp.name = p.Port.StrVal
		return pp, nil
	}
	pp.lo, pp.hi = p.Port.IntVal, p.Port.IntVal
	if p.EndPort != nil {
		pp.hi = *p.EndPort
	}
	if pp.lo < 1 || pp.lo > 65535 || pp.hi < pp.lo || pp.hi > 65535 {
		return port{}, fmt.Errorf("port range %d-%d is not within 1-65535 or ends before it starts", pp.lo, pp.hi)
	}
	return pp, nil
}

func compileBlock(b *networkingv1.IPBlock) (block, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return block{}, fmt.Errorf("cidr: %w", err)
	}
	out := block{cidr: cidr.Masked()}
	for i, e := range b.Except {
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			return block{}, fmt.Errorf("except[%d]: %w", i, err)
		}
		out.except = append(out.except, ex.Masked())
	}
	return out, nil
}

func blockString(b block) string {
	s := b.cidr.String()
	if len(b.except) > 0 {
		ex := make([]string, len(b.except))
		for i, e := range b.except {
			ex[i] = e.String()
		}
		s += " except " + strings.Join(ex, ",")
	}
	return s
}
