// Package render turns hoststack objects into the engine configuration one
// node must enforce. It is a pure function — objects in, config out, no
// clients, no clocks — so the whole mapping is table-tested, and the
// standalone agent (YAML files) and the Kubernetes agent (informer caches)
// share it.
package render

import (
	"fmt"
	"math/bits"
	"net/netip"
	"sort"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
)

// Input is everything rendering looks at.
type Input struct {
	// NodeLabels are the labels of the node the agent runs on; nil means
	// "no node" (standalone mode): nodeSelector is not applied.
	NodeLabels map[string]string
	// AppNamespaces, in any order.
	AppNamespaces []hsv1.AppNamespace
	// Secrets maps "namespace/name" to the value of key `secret` of that
	// Secret, for AppNamespaces with a secretRef.
	Secrets map[string]string
	// SessionRules, in any order. Of two rules with the same match the one
	// created first wins (engine/rules resolves it).
	SessionRules []hsv1.SessionRule
	// CertKeyPairs and the data of the Secrets they name ("namespace/name"),
	// in standalone mode (the Kubernetes agent reads Secrets one by one).
	CertKeyPairs []hsv1.CertKeyPair
	SecretData   map[string]map[string][]byte
}

// Problem is something about one object that the schema could not judge and
// that keeps it from being served; it becomes a status condition (Kubernetes
// mode) or an error line (standalone mode).
type Problem struct {
	Object string // "AppNamespace namespace/name"
	Field  string // e.g. "spec.secretRef.name"
	Reason string // CamelCase, as in a condition
	Detail string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s: %s (%s)", p.Object, p.Field, p.Detail, p.Reason)
}

// Output is the desired engine state, sorted by key so equal inputs render
// byte-identical outputs (the agent diffs against what it applied).
type Output struct {
	Namespaces []session.NamespaceConfig
	// Rules of the served app namespaces, sorted by name; compile them with
	// rules.Compile (which also finds conflicts).
	Rules []rules.Rule
	// Interfaces are the userspace stacks of the served Interface-mode app
	// namespaces, sorted by namespace key (at most one per node interface).
	Interfaces []Interface
	Problems   []Problem
}

// Interface is an Interface-mode app namespace's userspace stack: the node
// interface, the stack's own addresses and default routes, the link driver.
type Interface struct {
	Namespace string // app namespace key
	Name      string // node interface
	VRF       int64
	Addrs     []netip.Prefix
	Gateways  []netip.Addr // at most one per family
	Driver    hsv1.LinkDriver
}

// SecretKey is the key of the Secret data an AppNamespace secretRef uses.
const SecretKey = "secret"

// Render computes the desired state.
func Render(in Input) Output {
	var out Output
	type candidate struct {
		an  *hsv1.AppNamespace
		cfg session.NamespaceConfig
		ifc *Interface
	}
	var candidates []candidate
	for i := range in.AppNamespaces {
		an := &in.AppNamespaces[i]
		if !an.DeletionTimestamp.IsZero() {
			continue
		}
		if in.NodeLabels != nil && len(an.Spec.NodeSelector) > 0 &&
			!labels.SelectorFromSet(an.Spec.NodeSelector).Matches(labels.Set(in.NodeLabels)) {
			continue
		}
		cfg, probs := namespaceConfig(an, in.Secrets)
		ifc, iprobs := networkConfig(an)
		probs = append(probs, iprobs...)
		if len(probs) > 0 {
			out.Problems = append(out.Problems, probs...)
			continue
		}
		if ifc != nil {
			cfg.SharedNetwork = true
			candidates = append(candidates, candidate{an, cfg, ifc})
			continue
		}
		out.Namespaces = append(out.Namespaces, cfg)
	}
	// One stack per node interface: of two app namespaces naming the same
	// interface, the older one gets it.
	sort.Slice(candidates, func(i, j int) bool {
		a, b := candidates[i].an, candidates[j].an
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return candidates[i].cfg.Key() < candidates[j].cfg.Key()
	})
	owner := map[string]string{}
	for _, c := range candidates {
		if o, taken := owner[c.ifc.Name]; taken {
			out.Problems = append(out.Problems, Problem{"AppNamespace " + c.cfg.Key(), "spec.network.interface.name", "InterfaceInUse",
				fmt.Sprintf("interface %s is already used by AppNamespace %s (the older one keeps it)", c.ifc.Name, o)})
			continue
		}
		owner[c.ifc.Name] = c.cfg.Key()
		out.Namespaces = append(out.Namespaces, c.cfg)
		out.Interfaces = append(out.Interfaces, *c.ifc)
	}
	sort.Slice(out.Namespaces, func(i, j int) bool { return out.Namespaces[i].Key() < out.Namespaces[j].Key() })
	sort.Slice(out.Interfaces, func(i, j int) bool { return out.Interfaces[i].Namespace < out.Interfaces[j].Namespace })

	served := make(map[string]bool, len(out.Namespaces))
	for _, n := range out.Namespaces {
		served[n.Key()] = true
	}
	for i := range in.SessionRules {
		sr := &in.SessionRules[i]
		if !sr.DeletionTimestamp.IsZero() {
			continue
		}
		key := sr.Namespace + "/" + sr.Spec.AppNamespaceRef.Name
		if !served[key] {
			// Not an error on a node whose selector excludes the app
			// namespace; the controller reports a truly missing one.
			if in.NodeLabels == nil && !exists(in.AppNamespaces, key) {
				out.Problems = append(out.Problems, Problem{"SessionRule " + sr.Namespace + "/" + sr.Name,
					"spec.appNamespaceRef.name", "AppNamespaceNotFound", "AppNamespace " + key + " not found"})
			}
			continue
		}
		r, err := SessionRule(sr)
		if err != nil {
			out.Problems = append(out.Problems, Problem{"SessionRule " + sr.Namespace + "/" + sr.Name, "spec", "InvalidRule", err.Error()})
			continue
		}
		out.Rules = append(out.Rules, r)
	}
	sort.Slice(out.Rules, func(i, j int) bool { return out.Rules[i].Name < out.Rules[j].Name })
	return out
}

func exists(ans []hsv1.AppNamespace, key string) bool {
	for i := range ans {
		if ans[i].Namespace+"/"+ans[i].Name == key {
			return true
		}
	}
	return false
}

// SessionRule converts one SessionRule object into an engine rule. The
// schema has already checked the fields; parsing again here guards against
// objects that bypassed it.
func SessionRule(sr *hsv1.SessionRule) (rules.Rule, error) {
	r := rules.Rule{
		Namespace: sr.Namespace + "/" + sr.Spec.AppNamespaceRef.Name,
		Name:      sr.Namespace + "/" + sr.Name,
		Tag:       sr.Spec.Tag,
		Created:   sr.CreationTimestamp.Time,
	}
	var err error
	if r.Scope, err = rules.ParseScope(string(sr.Spec.Scope)); err != nil {
		return r, fmt.Errorf("spec.scope: %w", err)
	}
	if r.Proto, err = rules.ParseProto(string(sr.Spec.Transport)); err != nil {
		return r, fmt.Errorf("spec.transport: %w", err)
	}
	if r.Action, err = rules.ParseAction(string(sr.Spec.Action.Type)); err != nil {
		return r, fmt.Errorf("spec.action.type: %w", err)
	}
	if sr.Spec.Action.Redirect != nil {
		r.RedirectApp = sr.Spec.Action.Redirect.App
	}
	if r.Local, err = prefix(sr.Spec.Local.CIDR, sr.Spec.Remote.CIDR); err != nil {
		return r, fmt.Errorf("spec.local.cidr: %w", err)
	}
	if r.Remote, err = prefix(sr.Spec.Remote.CIDR, sr.Spec.Local.CIDR); err != nil {
		return r, fmt.Errorf("spec.remote.cidr: %w", err)
	}
	if sr.Spec.Local.Port < 0 || sr.Spec.Local.Port > 65535 {
		return r, fmt.Errorf("spec.local.port %d out of range", sr.Spec.Local.Port)
	}
	if sr.Spec.Remote.Port < 0 || sr.Spec.Remote.Port > 65535 {
		return r, fmt.Errorf("spec.remote.port %d out of range", sr.Spec.Remote.Port)
	}
	r.LocalPort, r.RemotePort = uint16(sr.Spec.Local.Port), uint16(sr.Spec.Remote.Port)
	if err := r.Validate(); err != nil {
		return r, err
	}
	return r, nil
}

// prefix parses cidr; an empty one is the wildcard of the other side's
// family (IPv4 when both are empty).
func prefix(cidr, other string) (netip.Prefix, error) {
	if cidr != "" {
		return netip.ParsePrefix(cidr)
	}
	if o, err := netip.ParsePrefix(other); err == nil && o.Addr().Is6() {
		return netip.MustParsePrefix("::/0"), nil
	}
	return netip.MustParsePrefix("0.0.0.0/0"), nil
}

func namespaceConfig(an *hsv1.AppNamespace, secrets map[string]string) (session.NamespaceConfig, []Problem) {
	obj := "AppNamespace " + an.Namespace + "/" + an.Name
	var probs []Problem
	cfg := session.NamespaceConfig{Namespace: an.Namespace, Name: an.Name}
	seg := an.Spec.Segments
	cfg.SegmentSize = quantity(seg.SegmentSize)
	// The engine's FIFOs are power-of-two rings; round up, never down, so an
	// app gets at least what the spec asked for.
	cfg.RxFifoSize = pow2Ceil(quantity(seg.RxFIFOSize))
	cfg.TxFifoSize = pow2Ceil(quantity(seg.TxFIFOSize))
	if seg.MaxSegmentsPerApp != nil {
		// The engine counts the app's own segment too; the API counts the
		// FIFO segments the app may use.
		cfg.MaxSegmentsPerApp = int(*seg.MaxSegmentsPerApp) + 1
	}
	if q := an.Spec.Quotas.MaxApps; q != nil {
		cfg.MaxApps = int(*q)
	}
	if q := an.Spec.Quotas.MaxSessionsPerApp; q != nil {
		cfg.MaxSessionsPerApp = int(*q)
	}
	if q := an.Spec.Quotas.MaxWorkersPerApp; q != nil {
		cfg.MaxWorkersPerApp = int(*q)
	}
	if q := an.Spec.Quotas.MaxListenersPerApp; q != nil {
		cfg.MaxListenersPerApp = int(*q)
	}
	if ref := an.Spec.SecretRef; ref != nil {
		s, ok := secrets[an.Namespace+"/"+ref.Name]
		switch {
		case !ok:
			probs = append(probs, Problem{obj, "spec.secretRef.name", "SecretNotFound",
				fmt.Sprintf("Secret %s/%s with key %q not found", an.Namespace, ref.Name, SecretKey)})
		case s == "":
			probs = append(probs, Problem{obj, "spec.secretRef.name", "SecretEmpty",
				fmt.Sprintf("Secret %s/%s key %q is empty", an.Namespace, ref.Name, SecretKey)})
		default:
			cfg.Secret = s
		}
	}
	if len(probs) == 0 {
		if err := cfg.Validate(); err != nil {
			probs = append(probs, Problem{obj, "spec.segments", "InvalidSizing", err.Error()})
		}
	}
	return cfg, probs
}

// networkConfig is the userspace stack of an Interface-mode app namespace
// (nil in PodNetwork mode). The schema checked the fields; parsing again
// guards against objects that bypassed it.
func networkConfig(an *hsv1.AppNamespace) (*Interface, []Problem) {
	if an.Spec.Network.Mode != hsv1.NetworkModeInterface {
		return nil, nil
	}
	obj := "AppNamespace " + an.Namespace + "/" + an.Name
	ni := an.Spec.Network.Interface
	if ni == nil || ni.Name == "" {
		return nil, []Problem{{obj, "spec.network.interface", "InvalidInterface", "Interface mode names no interface"}}
	}
	ifc := &Interface{Namespace: an.Namespace + "/" + an.Name, Name: ni.Name, Driver: ni.Driver}
	if ni.VRF != nil {
		ifc.VRF = *ni.VRF
	}
	if ifc.Driver == "" {
		ifc.Driver = hsv1.LinkDriverAFXDP
	}
	var probs []Problem
	fam := map[bool]bool{}
	for i, a := range ni.Addresses {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			probs = append(probs, Problem{obj, fmt.Sprintf("spec.network.interface.addresses[%d]", i), "InvalidAddress", err.Error()})
			continue
		}
		ifc.Addrs = append(ifc.Addrs, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()))
		fam[p.Addr().Unmap().Is4()] = true
	}
	if len(ni.Addresses) == 0 {
		probs = append(probs, Problem{obj, "spec.network.interface.addresses", "InvalidAddress", "Interface mode needs the stack's own addresses"})
	}
	for _, g := range []struct {
		field, v string
		v4       bool
	}{{"ipv4Gateway", ni.IPv4Gateway, true}, {"ipv6Gateway", ni.IPv6Gateway, false}} {
		if g.v == "" {
			continue
		}
		ip, err := netip.ParseAddr(g.v)
		if err != nil || ip.Unmap().Is4() != g.v4 || !fam[g.v4] {
			probs = append(probs, Problem{obj, "spec.network.interface." + g.field, "InvalidGateway",
				fmt.Sprintf("%q is not an address of a family the stack has", g.v)})
			continue
		}
		ifc.Gateways = append(ifc.Gateways, ip.Unmap())
	}
	return ifc, probs
}

func quantity(q *resource.Quantity) int {
	if q == nil {
		return 0
	}
	v, ok := q.AsInt64()
	if !ok || v < 0 || v > 1<<40 {
		return -1 // Validate reports it
	}
	return int(v)
}

func pow2Ceil(v int) int {
	if v <= 1 {
		return v
	}
	return 1 << bits.Len(uint(v-1))
}
