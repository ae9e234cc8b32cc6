package netpol

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// Entry is one compiled rule as `hoststack-agent rules` shows it: a pod
// isolated in a direction, and one rule of one policy allowing peers on
// ports. A pod isolated by a policy without rules for the direction has an
// entry with Peers "(none)".
type Entry struct {
	Pod       string
	Direction Direction
	Policy    string // namespace/name, or Kind/name (action, rule) for admin policies
	Peers     string
	Ports     string
	rank      int // 0 admin, 1 NetworkPolicy, 2 baseline: the order they are judged in
}

func adminEntry(pod string, d Direction, kind string, r adminRule) Entry {
	act := map[adminAction]string{actAllow: "Allow", actDeny: "Deny", actPass: "Pass"}[r.action]
	pol := fmt.Sprintf("%s/%s %s (%s)", kind, r.policy, act, r.rule)
	rank := 0
	if kind == KindAdminNetworkPolicy {
		pol = fmt.Sprintf("%s/%s[%d] %s (%s)", kind, r.policy, r.priority, act, r.rule)
	} else {
		rank = 2
	}
	peers := fmt.Sprintf("%d pods", len(r.hosts))
	ports := portsString(r.ports)
	if r.none {
		ports = "(none)"
	}
	return Entry{Pod: pod, Direction: d, Policy: pol, Peers: peers, Ports: ports, rank: rank}
}

// Counts says how big the table is: policies rendered (admin ones
// included), pods isolated in some direction or subject to an admin
// policy, index entries.
func (t *Table) Counts() (policies, isolatedPods, entries int) {
	for _, e := range t.pods {
		if e.isolated[Ingress] != nil || e.isolated[Egress] != nil ||
			len(e.admin[Ingress])+len(e.admin[Egress])+len(e.baseline[Ingress])+len(e.baseline[Egress]) > 0 {
			isolatedPods++
		}
	}
	return t.policies + t.admins, isolatedPods, t.entries
}

// Dump lists the table's entries, sorted by pod, direction, policy.
func (t *Table) Dump() []Entry {
	var out []Entry
	for _, e := range t.pods {
		for d := range e.admin {
			for _, r := range e.admin[d] {
				out = append(out, adminEntry(e.key, Direction(d), KindAdminNetworkPolicy, r))
			}
			for _, r := range e.baseline[d] {
				out = append(out, adminEntry(e.key, Direction(d), KindBaselineNetworkPolicy, r))
			}
		}
		for d, dr := range e.isolated {
			if dr == nil {
				continue
			}
			has := map[string]bool{}
			for _, r := range dr.rules {
				has[r.policy] = true
				peers := "*"
				if len(r.peers) > 0 {
					peers = strings.Join(r.peers, "; ")
				}
				out = append(out, Entry{Pod: e.key, Direction: Direction(d), Policy: r.policy, Peers: peers, Ports: portsString(r.ports), rank: 1})
			}
			for _, p := range dr.isolatedBy {
				if !has[p] {
					out = append(out, Entry{Pod: e.key, Direction: Direction(d), Policy: p, Peers: "(none)", Ports: "-", rank: 1})
				}
			}
		}
	}
	// admin rules keep their precedence order: sort only by pod and
	// direction, then NetworkPolicies by name
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.rank != b.rank {
			return a.rank < b.rank
		}
		return a.rank == 1 && a.Policy < b.Policy
	})
	return out
}

func portsString(ps []port) string {
	if len(ps) == 0 {
		return "*"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		switch {
		case p.name != "":
			s[i] = fmt.Sprintf("%s/%s", p.proto, p.name)
		case p.lo == 0:
			s[i] = fmt.Sprintf("%s/*", p.proto)
		case p.lo == p.hi:
			s[i] = fmt.Sprintf("%s/%d", p.proto, p.lo)
		default:
			s[i] = fmt.Sprintf("%s/%d-%d", p.proto, p.lo, p.hi)
		}
	}
	return strings.Join(s, ",")
}

// WriteEntries prints entries as a table.
func WriteEntries(w io.Writer, entries []Entry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tDIRECTION\tPOLICY\tPEERS\tPORTS")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Pod, e.Direction, e.Policy, e.Peers, e.Ports)
	}
	return tw.Flush()
}
