// Package render turns hoststack objects into the engine configuration one
// node must enforce. It is a pure function — objects in, config out, no
// clients, no clocks — so the whole mapping is table-tested, and the
// standalone agent (YAML files) and the Kubernetes agent (informer caches)
// share it.
package render

import (
	"fmt"
	"math/bits"
	"sort"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
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
	Problems   []Problem
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
	return out
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
