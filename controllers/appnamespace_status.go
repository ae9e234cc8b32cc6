/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// maxNotReadyListed bounds how many nodes a condition message names.
const maxNotReadyListed = 5

// setAppNamespaceStatus writes the counters and the Valid, NodesReady and
// Ready conditions. Ready needs a valid spec and at least one live node
// serving the AppNamespace, every live selected node ready: with none,
// nothing can attach yet, so a script waiting for Ready keeps waiting.
func setAppNamespaceStatus(an *hsv1.AppNamespace, problem *specProblem, agg nodeAggregate) {
	st := &an.Status
	gen := an.Generation
	st.ObservedGeneration = gen
	st.SelectedNodes, st.ReadyNodes = agg.Selected, agg.Ready

	set := func(t string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}

	if problem != nil {
		set(hsv1.ConditionValid, false, problem.Reason, problem.Message)
	} else {
		set(hsv1.ConditionValid, true, hsv1.ReasonValid, "spec is valid")
	}

	nodesOK, nodesReason, nodesMsg := nodesCondition(agg)
	set(hsv1.ConditionNodesReady, nodesOK, nodesReason, nodesMsg)

	switch {
	case problem != nil:
		set(hsv1.ConditionReady, false, problem.Reason, problem.Message)
	case !nodesOK:
		set(hsv1.ConditionReady, false, nodesReason, nodesMsg)
	default:
		set(hsv1.ConditionReady, true, nodesReason, nodesMsg)
	}
}

func nodesCondition(agg nodeAggregate) (ok bool, reason, msg string) {
	gone := ""
	if len(agg.NotServing) > 0 {
		gone = "; not serving (not counted): " + listed(agg.NotServing)
	}
	switch {
	case agg.Selected == 0:
		return false, hsv1.ReasonNoNodesSelected, "no live node serves this AppNamespace; apps can attach once an agent on a selected node reports it" + gone
	case agg.Ready == agg.Selected:
		return true, hsv1.ReasonNodesReady, fmt.Sprintf("%d/%d nodes ready%s", agg.Ready, agg.Selected, gone)
	}
	return false, hsv1.ReasonNodesNotReady,
		fmt.Sprintf("%d/%d nodes ready; %s%s", agg.Ready, agg.Selected, listed(agg.NotReady), gone)
}

// listed joins at most maxNotReadyListed node descriptions.
func listed(nodes []string) string {
	more := ""
	if len(nodes) > maxNotReadyListed {
		more = fmt.Sprintf("; and %d more", len(nodes)-maxNotReadyListed)
		nodes = nodes[:maxNotReadyListed]
	}
	return strings.Join(nodes, "; ") + more
}
