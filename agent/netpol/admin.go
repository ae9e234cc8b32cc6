package netpol

import (
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	anpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
)

// Admin policies (policy.networking.k8s.io/v1alpha1, alpha): for each
// direction, a pod's AdminNetworkPolicy rules are judged first, in order
// of priority (lower first; equal priorities by name) and rule order: the
// first rule matching the peer and port decides — Allow and Deny finally,
// Pass hands the session to NetworkPolicy. NetworkPolicy decides when it
// isolates the pod; when it does not, the BaselineAdminNetworkPolicy's
// first matching rule decides; without one the session is allowed.
//
// Peers are pods (the node's: both ends of a cut-through session are) by
// namespaces and pod selectors; ports by number, name (the destination
// pod's) or range. sameLabels and notSameLabels are not supported: such a
// peer matches nothing and is reported as a Problem.

// Policy kinds, as reasons and metrics name them.
const (
	KindNetworkPolicy         = "NetworkPolicy"
	KindAdminNetworkPolicy    = "AdminNetworkPolicy"
	KindBaselineNetworkPolicy = "BaselineAdminNetworkPolicy"
)

type adminAction int

const (
	actAllow adminAction = iota
	actDeny
	actPass
)

// adminRule is one compiled ANP or BANP rule for one subject pod.
type adminRule struct {
	policy   string // the policy's name
	rule     string // rule name, or "ingress[i]"/"egress[i]"
	priority int32
	action   adminAction
	hosts    map[string]bool // peer pods (UIDs)
	ports    []port          // empty: every port
	none     bool            // every port was invalid: matches nothing
}

// Admin is the input of RenderAll beyond NetworkPolicies.
type Admin struct {
	AdminNetworkPolicies         []anpv1.AdminNetworkPolicy
	BaselineAdminNetworkPolicies []anpv1.BaselineAdminNetworkPolicy
}

// RenderAll is Render with AdminNetworkPolicies and the
// BaselineAdminNetworkPolicy.
func RenderAll(pods []corev1.Pod, namespaces []corev1.Namespace, policies []networkingv1.NetworkPolicy, admin Admin) (*Table, []Problem) {
	t, problems := Render(pods, namespaces, policies)
	nsLabels := make(map[string]labels.Set, len(namespaces))
	for i := range namespaces {
		nsLabels[namespaces[i].Name] = labels.Set(namespaces[i].Labels)
	}
	var live []podRef
	for i := range pods {
		if e := t.pods[string(pods[i].UID)]; e != nil {
			live = append(live, podRef{string(pods[i].UID), &pods[i]})
		}
	}
	anps := append([]anpv1.AdminNetworkPolicy(nil), admin.AdminNetworkPolicies...)
	sort.Slice(anps, func(i, j int) bool {
		if anps[i].Spec.Priority != anps[j].Spec.Priority {
			return anps[i].Spec.Priority < anps[j].Spec.Priority
		}
		return anps[i].Name < anps[j].Name
	})
	for _, p := range anps {
		problems = append(problems, t.addAdmin(KindAdminNetworkPolicy, p.Name, p.Spec.Priority, p.Spec.Subject,
			ingressRulesOf(p.Spec.Ingress), egressRulesOf(p.Spec.Egress), live, nsLabels)...)
	}
	banps := append([]anpv1.BaselineAdminNetworkPolicy(nil), admin.BaselineAdminNetworkPolicies...)
	sort.Slice(banps, func(i, j int) bool { return banps[i].Name < banps[j].Name })
	for _, p := range banps {
		var in, out []genericRule
		for _, r := range p.Spec.Ingress {
			in = append(in, genericRule{r.Name, string(r.Action), r.From, r.Ports})
		}
		for _, r := range p.Spec.Egress {
			out = append(out, genericRule{r.Name, string(r.Action), r.To, r.Ports})
		}
		problems = append(problems, t.addAdmin(KindBaselineNetworkPolicy, p.Name, 0, p.Spec.Subject, in, out, live, nsLabels)...)
	}
	return t, problems
}

type genericRule struct {
	name   string
	action string
	peers  []anpv1.AdminNetworkPolicyPeer
	ports  *[]anpv1.AdminNetworkPolicyPort
}

func ingressRulesOf(rs []anpv1.AdminNetworkPolicyIngressRule) []genericRule {
	out := make([]genericRule, len(rs))
	for i, r := range rs {
		out[i] = genericRule{r.Name, string(r.Action), r.From, r.Ports}
	}
	return out
}

func egressRulesOf(rs []anpv1.AdminNetworkPolicyEgressRule) []genericRule {
	out := make([]genericRule, len(rs))
	for i, r := range rs {
		out[i] = genericRule{r.Name, string(r.Action), r.To, r.Ports}
	}
	return out
}

func (t *Table) addAdmin(kind, name string, priority int32, subject anpv1.AdminNetworkPolicySubject, in, out []genericRule, pods []podRef, nsLabels map[string]labels.Set) []Problem {
	var problems []Problem
	key := kind + "/" + name
	t.keys[key] = true
	bad := func(format string, args ...any) {
		problems = append(problems, Problem{Policy: key, Message: fmt.Sprintf(format, args...)})
	}
	nsSel, podSel := subject.Namespaces, (*metav1.LabelSelector)(nil)
	if subject.Pods != nil {
		nsSel, podSel = &subject.Pods.NamespaceSelector, &subject.Pods.PodSelector
	}
	subjects, err := selectPods(nsSel, podSel, pods, nsLabels)
	if err != nil {
		bad("spec.subject: %v", err)
		return problems
	}
	if len(subjects) == 0 {
		return problems
	}
	compile := func(d Direction, rs []genericRule) []adminRule {
		var out []adminRule
		for i, r := range rs {
			field := fmt.Sprintf("spec.%s[%d]", d, i)
			ar := adminRule{policy: name, rule: r.name, priority: priority, hosts: map[string]bool{}}
			if ar.rule == "" {
				ar.rule = fmt.Sprintf("%s[%d]", d, i)
			}
			switch r.action {
			case "Allow":
				ar.action = actAllow
			case "Deny":
				ar.action = actDeny
			case "Pass":
				if kind == KindBaselineNetworkPolicy {
					bad("%s.action: Pass is for AdminNetworkPolicies", field)
					continue
				}
				ar.action = actPass
			default:
				bad("%s.action: %q is not Allow, Deny or Pass", field, r.action)
				continue
			}
			for j, peer := range r.peers {
				pf := fmt.Sprintf("%s.peers[%d]", field, j)
				var hosts []string
				var err error
				switch {
				case peer.Namespaces != nil:
					if len(peer.Namespaces.SameLabels) > 0 || len(peer.Namespaces.NotSameLabels) > 0 {
						bad("%s.namespaces: sameLabels and notSameLabels are not supported", pf)
						continue
					}
					hosts, err = selectPods(peer.Namespaces.NamespaceSelector, nil, pods, nsLabels)
				case peer.Pods != nil:
					if len(peer.Pods.Namespaces.SameLabels) > 0 || len(peer.Pods.Namespaces.NotSameLabels) > 0 {
						bad("%s.pods.namespaces: sameLabels and notSameLabels are not supported", pf)
						continue
					}
					hosts, err = selectPods(peer.Pods.Namespaces.NamespaceSelector, &peer.Pods.PodSelector, pods, nsLabels)
				default:
					bad("%s: neither namespaces nor pods", pf)
					continue
				}
				if err != nil {
					bad("%s: %v", pf, err)
					continue
				}
				for _, h := range hosts {
					ar.hosts[h] = true
				}
			}
			if r.ports != nil {
				for j, p := range *r.ports {
					pp, err := compileAdminPort(p)
					if err != nil {
						bad("%s.ports[%d]: %v", field, j, err)
						continue
					}
					ar.ports = append(ar.ports, pp)
				}
				ar.none = len(ar.ports) == 0
			}
			out = append(out, ar)
		}
		return out
	}
	rules := [2][]adminRule{Ingress: compile(Ingress, in), Egress: compile(Egress, out)}
	for _, uid := range subjects {
		e := t.pods[uid]
		for d := range rules {
			if kind == KindBaselineNetworkPolicy {
				e.baseline[d] = append(e.baseline[d], rules[d]...)
			} else {
				e.admin[d] = append(e.admin[d], rules[d]...)
			}
			t.entries += len(rules[d])
		}
	}
	t.admins++
	return problems
}

// selectPods lists the pods whose namespace matches nsSel and, when
// podSel is set, whose labels match it. A nil namespace selector selects
// no namespace.
func selectPods(nsSel, podSel *metav1.LabelSelector, pods []podRef, nsLabels map[string]labels.Set) ([]string, error) {
	if nsSel == nil {
		return nil, nil
	}
	ns, err := metav1.LabelSelectorAsSelector(nsSel)
	if err != nil {
		return nil, fmt.Errorf("namespaceSelector: %w", err)
	}
	ps := labels.Everything()
	if podSel != nil {
		if ps, err = metav1.LabelSelectorAsSelector(podSel); err != nil {
			return nil, fmt.Errorf("podSelector: %w", err)
		}
	}
	var out []string
	for _, r := range pods {
		if ns.Matches(nsLabels[r.pod.Namespace]) && ps.Matches(labels.Set(r.pod.Labels)) {
			out = append(out, r.uid)
		}
	}
	return out, nil
}

func compileAdminPort(p anpv1.AdminNetworkPolicyPort) (port, error) {
	set := 0
	var pp port
	if p.PortNumber != nil {
		set++
		pp = port{proto: p.PortNumber.Protocol, lo: p.PortNumber.Port, hi: p.PortNumber.Port}
	}
	if p.NamedPort != nil {
		set++
		// a named port matches the destination's container port of that
		// name whatever its protocol
		pp = port{proto: "", name: *p.NamedPort}
	}
	if p.PortRange != nil {
		set++
		pp = port{proto: p.PortRange.Protocol, lo: p.PortRange.Start, hi: p.PortRange.End}
	}
	if set != 1 {
		return port{}, fmt.Errorf("exactly one of portNumber, namedPort and portRange must be set")
	}
	if pp.name != "" {
		return pp, nil
	}
	if pp.proto == "" {
		pp.proto = corev1.ProtocolTCP
	}
	if pp.lo < 1 || pp.hi > 65535 || pp.hi < pp.lo {
		return port{}, fmt.Errorf("port range %d-%d is not within 1-65535 or ends before it starts", pp.lo, pp.hi)
	}
	return pp, nil
}

// adminVerdict runs rs (in order) for a session: the first rule matching
// the peer and the port decides.
func adminVerdict(rs []adminRule, peerUID string, proto corev1.Protocol, n int32, dstPorts []corev1.ContainerPort) (*adminRule, bool) {
	for i := range rs {
		r := &rs[i]
		if r.none || !r.hosts[peerUID] {
			continue
		}
		if len(r.ports) == 0 || adminPortsMatch(r.ports, proto, n, dstPorts) {
			return r, true
		}
	}
	return nil, false
}

func adminPortsMatch(ports []port, proto corev1.Protocol, n int32, dstPorts []corev1.ContainerPort) bool {
	for _, p := range ports {
		if p.name != "" {
			for _, c := range dstPorts {
				cp := c.Protocol
				if cp == "" {
					cp = corev1.ProtocolTCP
				}
				if c.Name == p.name && cp == proto && c.ContainerPort == n {
					return true
				}
			}
			continue
		}
		if p.proto == proto && p.lo <= n && n <= p.hi {
			return true
		}
	}
	return false
}
