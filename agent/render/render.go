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
	Rules    []rules.Rule
	Problems []Problem
}

// SecretKey is the key of the Secret data an AppNamespace secretRef uses.
const SecretKey = "secret"

// Render computes the desired state.
func Render(in Input) Output {
	var out Output
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
		if len(probs) > 0 {
			out.Problems = append(out.Problems, probs...)
			continue
		}
		out.Namespaces = append(out.Namespaces, cfg)
	}
	sort.Slice(out.Namespaces, func(i, j int) bool { return out.Namespaces[i].Key() < out.Namespaces[j].Key() })

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
	cfg.RxFifoSize = pow2Ceil(quantity(seg.RxFifoSize))
	cfg.TxFifoSize = pow2Ceil(quantity(seg.TxFifoSize))
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
	if an.Spec.Network.Mode == hsv1.NetworkModeInterface {
		probs = append(probs, Problem{obj, "spec.network.mode", "TransportUnavailable",
			"network mode Interface needs the userspace transport, which this agent does not provide yet"})
	}
	if len(probs) == 0 {
		if err := cfg.Validate(); err != nil {
			probs = append(probs, Problem{obj, "spec.segments", "InvalidSizing", err.Error()})
		}
	}
	return cfg, probs
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
