package netpol

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Session is what Decide judges: a session from the pod SrcUID (address
// Src) to port Port of the pod DstUID (address Dst).
type Session struct {
	SrcUID, DstUID string
	Src, Dst       netip.Addr
	Proto          corev1.Protocol
	Port           int32
}

// Decision is Decide's answer. When a direction refused, Denied says which,
// Pod the pod judged, Kind the kind of policy that refused (NetworkPolicy:
// IsolatedBy are the policies selecting the pod for that direction, none
// of which allowed the session; an admin kind: IsolatedBy is the policy
// whose rule Rule denied it). AllowedBy names, per direction, the policy
// that allowed the session ("" when nothing judged it).
type Decision struct {
	Allowed    bool
	Denied     Direction
	Pod        string
	Kind       string
	Rule       string
	IsolatedBy []string
	AllowedBy  [2]string
}

// Reason says why a session was refused, for logs and errors.
func (d Decision) Reason(s Session) string {
	if d.Allowed {
		return "allowed"
	}
	peer := s.Dst
	what := "to"
	if d.Denied == Ingress {
		peer, what = s.Src, "from"
	}
	// the policies first: an app's error message is cut to the wire's
	// limit, and they are what it needs to know
	if d.Kind != KindNetworkPolicy && d.Kind != "" {
		return fmt.Sprintf("%s %s rule %s denies %s of pod %s %s %s %s port %d",
			d.Kind, strings.Join(d.IsolatedBy, ", "), d.Rule, d.Denied, d.Pod, strings.ToLower(string(s.Proto)), what, peer, s.Port)
	}
	return fmt.Sprintf("NetworkPolicy %s isolates pod %s for %s and none allows %s %s %s port %d",
		strings.Join(d.IsolatedBy, ", "), d.Pod, d.Denied, strings.ToLower(string(s.Proto)), what, peer, s.Port)
}

// Decide judges s: allowed when the source's egress and the destination's
// ingress both allow it. Pods the table does not know are not isolated,
// and match no pod selector (ipBlocks still see their address).
func (t *Table) Decide(s Session) Decision {
	s.Src, s.Dst = s.Src.Unmap(), s.Dst.Unmap()
	var d Decision
	src, dst := t.pods[s.SrcUID], t.pods[s.DstUID]
	var dstPorts []corev1.ContainerPort
	if dst != nil {
		dstPorts = dst.ports
	}
	for _, dir := range []Direction{Egress, Ingress} {
		e, peerUID, peer := src, s.DstUID, s.Dst
		if dir == Ingress {
			e, peerUID, peer = dst, s.SrcUID, s.Src
		}
		if e == nil {
			continue
		}
		by, deny := e.judge(dir, peerUID, peer, s.Proto, s.Port, dstPorts)
		if deny != nil {
			deny.Denied, deny.Pod, deny.AllowedBy = dir, e.key, d.AllowedBy
			return *deny
		}
		d.AllowedBy[dir] = by
	}
	d.Allowed = true
	return d
}

// judge runs one direction for the pod e: admin policies, then
// NetworkPolicy, then the baseline. It returns the allowing policy, or a
// Decision for a refusal.
func (e *podEntry) judge(dir Direction, peerUID string, peer netip.Addr, proto corev1.Protocol, port int32, dstPorts []corev1.ContainerPort) (string, *Decision) {
	if r, ok := adminVerdict(e.admin[dir], peerUID, proto, port, dstPorts); ok {
		switch r.action {
		case actAllow:
			return KindAdminNetworkPolicy + "/" + r.policy, nil
		case actDeny:
			return "", &Decision{Kind: KindAdminNetworkPolicy, Rule: r.rule, IsolatedBy: []string{r.policy}}
		}
		// Pass: NetworkPolicy decides, then the baseline
	}
	if dr := e.isolated[dir]; dr != nil {
		by, ok := dr.allows(peerUID, peer, proto, port, dstPorts)
		if !ok {
			return "", &Decision{Kind: KindNetworkPolicy, IsolatedBy: dr.isolatedBy}
		}
		return by, nil
	}
	if r, ok := adminVerdict(e.baseline[dir], peerUID, proto, port, dstPorts); ok {
		if r.action == actDeny {
			return "", &Decision{Kind: KindBaselineNetworkPolicy, Rule: r.rule, IsolatedBy: []string{r.policy}}
		}
		return KindBaselineNetworkPolicy + "/" + r.policy, nil
	}
	return "", nil
}

// allows finds a rule matching the peer (uid, addr) and the port, whose
// names resolve against the destination pod's container ports.
func (dr *dirRules) allows(peerUID string, peer netip.Addr, proto corev1.Protocol, port int32, dstPorts []corev1.ContainerPort) (string, bool) {
	try := func(i int32) bool { return portsMatch(dr.rules[i].ports, proto, port, dstPorts) }
	for _, i := range dr.anyPeer {
		if try(i) {
			return dr.rules[i].policy, true
		}
	}
	if peerUID != "" {
		for _, i := range dr.byHost[peerUID] {
			if try(i) {
				return dr.rules[i].policy, true
			}
		}
	}
	if peer.IsValid() {
		for _, l := range dr.lens {
			bits := l
			if l >= 1000 {
				if !peer.Is6() {
					continue
				}
				bits = l - 1000
			} else if !peer.Is4() {
				continue
			}
			p, err := peer.Prefix(bits)
			if err != nil {
				continue
			}
		refs:
			for _, r := range dr.byPrefix[p] {
				for _, ex := range r.except {
					if ex.Contains(peer) {
						continue refs
					}
				}
				if try(r.rule) {
					return dr.rules[r.rule].policy, true
				}
			}
		}
	}
	return "", false
}

func portsMatch(ports []port, proto corev1.Protocol, n int32, dstPorts []corev1.ContainerPort) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.proto != proto {
			continue
		}
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
		if p.lo == 0 || (p.lo <= n && n <= p.hi) {
			return true
		}
	}
	return false
}
