/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// ruleVerdict is what the SessionRule reconciler found.
type ruleVerdict struct {
	// appNamespaceFound: the referenced AppNamespace exists.
	appNamespaceFound bool
	// conflictWith is the older rule with the same match, if any.
	conflictWith *hsv1.SessionRule
	// enforcing counts the live nodes that enforce the rule (when
	// accepted).
	enforcing int32
}

// setRuleStatus writes Resolved, Conflict, Accepted, Ready and
// enforcingNodes. Accepted is False for the first problem in that order
// (an unresolved reference makes the conflict question moot); Ready adds
// that a live node enforces the rule.
func setRuleStatus(rule *hsv1.SessionRule, v ruleVerdict) {
	st := &rule.Status
	st.ObservedGeneration = rule.Generation
	st.EnforcingNodes = 0
	gen := rule.Generation
	set := func(t string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	ref := rule.Spec.AppNamespaceRef.Name

	if !v.appNamespaceFound {
		msg := fmt.Sprintf("AppNamespace %q not found in namespace %q", ref, rule.Namespace)
		set(hsv1.ConditionResolved, false, hsv1.ReasonAppNamespaceNotFound, msg)
		// Without an AppNamespace there is no table to conflict in.
		meta.RemoveStatusCondition(&st.Conditions, hsv1.ConditionConflict)
		set(hsv1.ConditionAccepted, false, hsv1.ReasonAppNamespaceNotFound, msg)
		set(hsv1.ConditionReady, false, hsv1.ReasonAppNamespaceNotFound, msg)
		return
	}
	set(hsv1.ConditionResolved, true, hsv1.ReasonAppNamespaceFound, fmt.Sprintf("AppNamespace %q found", ref))

	if w := v.conflictWith; w != nil {
		msg := fmt.Sprintf("SessionRule %q has the same match (scope, transport, local, remote) in AppNamespace %q and is older; it applies and this rule does not",
			w.Name, ref)
		set(hsv1.ConditionConflict, true, hsv1.ReasonConflict, msg)
		set(hsv1.ConditionAccepted, false, hsv1.ReasonConflict, msg)
		set(hsv1.ConditionReady, false, hsv1.ReasonConflict, msg)
		return
	}
	set(hsv1.ConditionConflict, false, hsv1.ReasonNoConflict, "no older rule has the same match")
	set(hsv1.ConditionAccepted, true, hsv1.ReasonAccepted, fmt.Sprintf("rule accepted into AppNamespace %q", ref))
	st.EnforcingNodes = v.enforcing
	if v.enforcing == 0 {
		set(hsv1.ConditionReady, false, hsv1.ReasonNotEnforced,
			fmt.Sprintf("accepted, but no live node serving AppNamespace %q has applied it yet", ref))
		return
	}
	set(hsv1.ConditionReady, true, hsv1.ReasonEnforced, fmt.Sprintf("enforced by %d live node(s)", v.enforcing))
}

// enforcingNodes counts the live nodes that serve the AppNamespace
// namespace/name Ready, at its generation, with as many rules in its table
// as the manager accepted (accepted): an agent still on an older rule set
// is not counted. The count cannot tell one rule from another, so a rule
// replaced by another in one step counts from the moment of the swap.
func enforcingNodes(namespace, name string, generation int64, accepted int, nodes []hsv1.SessionNode) int32 {
	var n int32
	for i := range nodes {
		node := &nodes[i]
		e := findEntry(node.Status.AppNamespaces, namespace, name)
		if e == nil || notServing(node) != "" || nodeNotReady(node, e, generation) != "" {
			continue
		}
		if int(e.Rules) == accepted {
			n++
		}
	}
	return n
}
