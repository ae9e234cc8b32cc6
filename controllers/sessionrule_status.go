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
}

// setRuleStatus writes Resolved, Conflict and Ready. Ready is False for
// the first problem in that order: an unresolved reference makes the
// conflict question moot.
func setRuleStatus(rule *hsv1.SessionRule, v ruleVerdict) {
	st := &rule.Status
	st.ObservedGeneration = rule.Generation
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
		set(hsv1.ConditionReady, false, hsv1.ReasonAppNamespaceNotFound, msg)
		return
	}
	set(hsv1.ConditionResolved, true, hsv1.ReasonAppNamespaceFound, fmt.Sprintf("AppNamespace %q found", ref))

	if w := v.conflictWith; w != nil {
		msg := fmt.Sprintf("SessionRule %q has the same match (scope, transport, local, remote) in AppNamespace %q and is older; it applies and this rule does not",
			w.Name, ref)
		set(hsv1.ConditionConflict, true, hsv1.ReasonConflict, msg)
		set(hsv1.ConditionReady, false, hsv1.ReasonConflict, msg)
		return
	}
	set(hsv1.ConditionConflict, false, hsv1.ReasonNoConflict, "no older rule has the same match")
	set(hsv1.ConditionReady, true, hsv1.ReasonAccepted, fmt.Sprintf("rule accepted into AppNamespace %q", ref))
}
