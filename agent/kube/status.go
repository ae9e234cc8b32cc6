package kube

import (
	"fmt"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/hoststack/hoststack/agent/render"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
)

// Selected reports whether an AppNamespace asks to be served on a node with
// nodeLabels: not being deleted, and its nodeSelector (if any) matches. It
// is the same test render.Render applies, kept here because the status has
// an entry for every selected AppNamespace, served or failed.
func Selected(an *hsv1.AppNamespace, nodeLabels map[string]string) bool {
	if !an.DeletionTimestamp.IsZero() {
		return false
	}
	if len(an.Spec.NodeSelector) == 0 {
		return true
	}
	return labels.SelectorFromSet(an.Spec.NodeSelector).Matches(labels.Set(nodeLabels))
}

// StatusInput is everything the SessionNode status is computed from.
type StatusInput struct {
	// NodeLabels select the AppNamespaces the node serves.
	NodeLabels map[string]string
	// AppNamespaces are all AppNamespaces the agent sees.
	AppNamespaces []hsv1.AppNamespace
	// Render is the rendered desired state; Conflicts come from compiling
	// its rules.
	Render    render.Output
	Conflicts []rules.Conflict
	// Applied is the set of app namespace keys the engine serves now;
	// ApplyErrors maps a key to why applying it failed.
	Applied     map[string]bool
	ApplyErrors map[string]string
	// Stats are the engine's per-app-namespace statistics, by key.
	Stats map[string]session.NamespaceStats
	// Engine is the engine's state; Version the agent's.
	Engine          hsv1.EngineState
	Version         string
	RulesGeneration int64
	// OtherErrors are agent problems not tied to one object (cache, engine),
	// and CertKeyPairs that could not be loaded.
	OtherErrors []hsv1.NodeError
	// CertKeyPairs is the number of CertKeyPairs loaded.
	CertKeyPairs int
	// Transport is the transport's type; "" when there is none.
	Transport hsv1.TransportType
}

// ReasonTooManyAppNamespaces is the node error of a status whose
// appNamespaces list was capped.
const ReasonTooManyAppNamespaces = "TooManyAppNamespaces"

// BuildStatus computes the SessionNode status the agent applies: one entry
// per selected AppNamespace (Ready when the engine serves it at its
// generation, Failed with the reason otherwise), render problems and rule
// conflicts as errors. It is pure: errors carry no time (the caller stamps
// them), and entries and errors come out in a deterministic order.
func BuildStatus(in StatusInput) hsv1.SessionNodeStatus {
	st := hsv1.SessionNodeStatus{
		Engine:          hsv1.EngineStatus{State: in.Engine, Version: in.Version},
		Transport:       hsv1.TransportStatus{Type: in.Transport, State: hsv1.TransportUp},
		RulesGeneration: in.RulesGeneration,
		CertKeyPairs:    int32(in.CertKeyPairs),
	}
	if in.Transport == "" {
		st.Transport = hsv1.TransportStatus{}
	}
	if in.Engine == hsv1.EngineStopped {
		if in.Transport != "" {
			st.Transport.State = hsv1.TransportDown
		}
		return st
	}

	problems := map[string][]string{} // "namespace/name" of an AppNamespace -> messages
	for _, p := range in.Render.Problems {
		if key, ok := strings.CutPrefix(p.Object, "AppNamespace "); ok {
			problems[key] = append(problems[key], p.Field+": "+p.Detail)
		}
	}
	losers := map[string]bool{}
	for _, c := range in.Conflicts {
		losers[c.Loser.Name] = true
	}
	ruleCount := map[string]int32{}
	for _, r := range in.Render.Rules {
		if !losers[r.Name] {
			ruleCount[r.Namespace]++
		}
	}

	ifaces := map[string]render.Interface{}
	for _, ifc := range in.Render.Interfaces {
		ifaces[ifc.Namespace] = ifc
	}
	for i := range in.AppNamespaces {
		an := &in.AppNamespaces[i]
		if !Selected(an, in.NodeLabels) {
			continue
		}
		key := an.Namespace + "/" + an.Name
		e := hsv1.AppNamespaceNodeStatus{Namespace: an.Namespace, Name: an.Name, ObservedGeneration: an.Generation}
		switch {
		case len(problems[key]) > 0:
			e.State = hsv1.AppNamespaceFailed
			e.Message = clip(strings.Join(problems[key], "; "), 1024)
		case in.ApplyErrors[key] != "":
			e.State = hsv1.AppNamespaceFailed
			e.Message = clip(in.ApplyErrors[key], 1024)
		case in.Applied[key]:
			e.State = hsv1.AppNamespaceReady
			e.Rules = ruleCount[key]
			e.Transport = in.Transport
			if ifc, ok := ifaces[key]; ok {
				e.Transport = driverTransport(ifc.Driver)
			}
		default:
			e.State = hsv1.AppNamespacePending
		}
		st.AppNamespaces = append(st.AppNamespaces, e)
	}
	sort.Slice(st.AppNamespaces, func(i, j int) bool {
		a, b := st.AppNamespaces[i], st.AppNamespaces[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})

	var errs []hsv1.NodeError
	if n := len(st.AppNamespaces); n > hsv1.MaxNodeAppNamespaces {
		// Capped here, not refused by the API server: a list over the
		// schema's bound would fail the whole status write. First among
		// the errors, so the errors' own cap keeps it.
		st.AppNamespaces = st.AppNamespaces[:hsv1.MaxNodeAppNamespaces]
		errs = append(errs, hsv1.NodeError{Reason: ReasonTooManyAppNamespaces,
			Message: fmt.Sprintf("this node serves %d AppNamespaces; status lists the first %d (by namespace, then name), the others are served but not reported", n, hsv1.MaxNodeAppNamespaces)})
	}
	errs = append(errs, in.OtherErrors...)
	for _, p := range in.Render.Problems {
		errs = append(errs, hsv1.NodeError{Reason: reason(p.Reason), Message: clip(p.Field+": "+p.Detail, 1024), Object: objectRef(p.Object)})
	}
	for _, c := range in.Conflicts {
		errs = append(errs, hsv1.NodeError{Reason: "RuleConflict", Message: clip(c.String(), 1024), Object: "SessionRule/" + c.Loser.Name})
	}
	keys := make([]string, 0, len(in.ApplyErrors))
	for k := range in.ApplyErrors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		errs = append(errs, hsv1.NodeError{Reason: "ApplyFailed", Message: clip(in.ApplyErrors[k], 1024), Object: "AppNamespace/" + k})
	}
	if len(errs) > 32 {
		errs = errs[:32]
	}
	st.Errors = errs
	if len(errs) > 0 {
		st.Engine.State = hsv1.EngineDegraded
		if in.Engine != hsv1.EngineRunning {
			st.Engine.State = in.Engine
		}
	}
	return st
}

// ReadyCondition is the SessionNode's Ready condition for a status (without
// times: the caller keeps lastTransitionTime).
func ReadyCondition(st hsv1.SessionNodeStatus) metav1.Condition {
	c := metav1.Condition{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Running", Message: "the session engine runs and its transport is up"}
	switch st.Engine.State {
	case hsv1.EngineRunning:
	case hsv1.EngineDegraded:
		c.Reason, c.Message = "Degraded", "the session engine runs; see errors for what it could not do"
	default:
		c.Status, c.Reason = metav1.ConditionFalse, string(st.Engine.State)
		if c.Reason == "" {
			c.Reason = "Unknown"
		}
		c.Message = "the session engine is " + strings.ToLower(c.Reason)
	}
	return c
}

// LimitCondition is the SessionNode's EngineLimitReached condition (without
// times): True while the engine is at a node-wide cap, or refused an app or
// worker for one since the previous status (refusedSince), naming the cap.
func LimitCondition(l session.LimitStatus, refusedSince bool) metav1.Condition {
	reasons := map[string]string{
		session.LimitNodeMaxApps:    hsv1.ReasonNodeMaxApps,
		session.LimitNodeMaxWorkers: hsv1.ReasonNodeMaxWorkers,
		session.LimitNodeMaxThreads: hsv1.ReasonNodeMaxThreads,
	}
	c := metav1.Condition{Type: hsv1.ConditionEngineLimitReached, Status: metav1.ConditionFalse, Reason: hsv1.ReasonWithinLimits,
		Message: fmt.Sprintf("the session engine is below its node-wide caps (apps %d, workers %d, engine threads %d)", l.MaxApps, l.MaxWorkers, l.MaxThreads)}
	if reached := l.Reached(); len(reached) > 0 {
		c.Status, c.Reason = metav1.ConditionTrue, reasons[reached[0]]
		c.Message = fmt.Sprintf("the session engine is at its node-wide caps %s: apps %d/%d, workers %d/%d, engine threads %d/%d; new apps or workers are refused",
			strings.Join(reached, ", "), l.Apps, l.MaxApps, l.Workers, l.MaxWorkers, l.Threads, l.MaxThreads)
		return c
	}
	if refusedSince && l.LastRefusal != "" {
		for name, r := range reasons {
			if strings.Contains(l.LastRefusal, name+" (") {
				c.Status, c.Reason = metav1.ConditionTrue, r
				c.Message = clip("the session engine refused an app or worker since the last report: "+l.LastRefusal, 1024)
			}
		}
	}
	return c
}

// objectRef turns render's "Kind namespace/name" into "Kind/namespace/name".
func objectRef(o string) string { return clip(strings.Replace(o, " ", "/", 1), 512) }

// reason makes sure a reason matches the NodeError pattern.
func reason(r string) string {
	if r == "" || r[0] < 'A' || r[0] > 'Z' {
		return "InvalidObject"
	}
	for _, c := range r {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return "InvalidObject"
		}
	}
	return clip(r, 64)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// driverTransport is the SessionNode name of a userspace stack's link driver.
func driverTransport(d hsv1.LinkDriver) hsv1.TransportType {
	switch d {
	case hsv1.LinkDriverAFPacket:
		return hsv1.TransportAFPacket
	case hsv1.LinkDriverDPDK:
		return hsv1.TransportDPDK
	}
	return hsv1.TransportAFXDP
}
