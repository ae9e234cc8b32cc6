/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// specProblem is a spec error the schema cannot express: label syntax, as
// the API server's own label validation defines it.
type specProblem struct {
	Reason  string
	Message string
}

// validateAppNamespace checks what the schema leaves to the controller:
// the syntax of selector keys and values. Nil means valid.
func validateAppNamespace(spec *hsv1.AppNamespaceSpec) *specProblem {
	if _, err := metav1.LabelSelectorAsSelector(&spec.PodSelector); err != nil {
		return &specProblem{Reason: hsv1.ReasonInvalidPodSelector, Message: "spec.podSelector: " + err.Error()}
	}
	keys := make([]string, 0, len(spec.NodeSelector))
	for k := range spec.NodeSelector {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same first error every time
	for _, k := range keys {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return &specProblem{Reason: hsv1.ReasonInvalidNodeSelector,
				Message: fmt.Sprintf("spec.nodeSelector key %q: %s", k, strings.Join(errs, "; "))}
		}
		if errs := validation.IsValidLabelValue(spec.NodeSelector[k]); len(errs) > 0 {
			return &specProblem{Reason: hsv1.ReasonInvalidNodeSelector,
				Message: fmt.Sprintf("spec.nodeSelector[%q] value %q: %s", k, spec.NodeSelector[k], strings.Join(errs, "; "))}
		}
	}
	return nil
}

// nodeAggregate is an AppNamespace's state summed over the live
// SessionNodes that report it.
type nodeAggregate struct {
	Selected, Ready int32
	// NotReady describes each selected node that is not ready, sorted by
	// node name.
	NotReady []string
	// NotServing describes each node that reports the AppNamespace but is
	// not live (its SessionNode is not Serving), sorted by node name: it
	// is counted nowhere else.
	NotServing []string
}

// aggregateNodes sums what the live SessionNodes report for the
// AppNamespace namespace/name at generation. A node whose agent stopped
// renewing its Lease (or whose Node is NotReady) is not counted at all:
// its report is the last word of an agent that may be dead. A live node
// counts as ready when its engine runs, its entry is Ready, and the entry
// has caught up with generation: an agent still on an older spec is not
// ready for the current one.
func aggregateNodes(namespace, name string, generation int64, nodes []hsv1.SessionNode) nodeAggregate {
	var agg nodeAggregate
	sorted := append([]hsv1.SessionNode(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for i := range sorted {
		node := &sorted[i]
		entry := findEntry(node.Status.AppNamespaces, namespace, name)
		if entry == nil {
			continue
		}
		if why := notServing(node); why != "" {
			agg.NotServing = append(agg.NotServing, node.Name+": "+why)
			continue
		}
		agg.Selected++
		if why := nodeNotReady(node, entry, generation); why != "" {
			agg.NotReady = append(agg.NotReady, node.Name+": "+why)
			continue
		}
		agg.Ready++
	}
	return agg
}

// notServing says why the manager does not count a SessionNode as live,
// or "". Until the liveness controller has judged a node, it is not live:
// Ready must never run ahead of what is known.
func notServing(node *hsv1.SessionNode) string {
	c := meta.FindStatusCondition(node.Status.Conditions, hsv1.ConditionServing)
	switch {
	case c == nil:
		return "liveness not yet known"
	case c.Status != metav1.ConditionTrue:
		return c.Reason
	}
	return ""
}

func findEntry(entries []hsv1.AppNamespaceNodeStatus, namespace, name string) *hsv1.AppNamespaceNodeStatus {
	for i := range entries {
		if entries[i].Namespace == namespace && entries[i].Name == name {
			return &entries[i]
		}
	}
	return nil
}

// nodeNotReady says why a node does not serve the AppNamespace yet, or "".
func nodeNotReady(node *hsv1.SessionNode, e *hsv1.AppNamespaceNodeStatus, generation int64) string {
	switch s := node.Status.Engine.State; s {
	case hsv1.EngineRunning, hsv1.EngineDegraded:
	case "":
		return "engine state not reported"
	default:
		return "engine " + string(s)
	}
	if e.State != hsv1.AppNamespaceReady {
		if e.Message != "" {
			return string(e.State) + ": " + e.Message
		}
		return string(e.State)
	}
	if e.ObservedGeneration < generation {
		return fmt.Sprintf("applied generation %d, want %d", e.ObservedGeneration, generation)
	}
	return ""
}
