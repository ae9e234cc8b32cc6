/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// SelectAppNamespace returns the AppNamespace of candidates (those of the
// pod's own namespace) that a pod with podLabels belongs to: of those whose
// podSelector selects it, the oldest, name breaking ties (creation times
// have one-second resolution), and the names of the others that select it
// too. AppNamespaces being deleted and those with an invalid selector
// (their status says so) select nothing. The pod webhook chooses with it
// and the agent, for a socket without the webhook's choice, too: one rule.
func SelectAppNamespace(podLabels map[string]string, candidates []AppNamespace) (*AppNamespace, []string) {
	var matches []*AppNamespace
	for i := range candidates {
		an := &candidates[i]
		if an.DeletionTimestamp != nil {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&an.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(podLabels)) {
			continue
		}
		matches = append(matches, an)
	}
	if len(matches) == 0 {
		return nil, nil
	}
	sort.Slice(matches, func(i, j int) bool {
		ti, tj := matches[i].CreationTimestamp, matches[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return matches[i].Name < matches[j].Name
	})
	others := make([]string, 0, len(matches)-1)
	for _, an := range matches[1:] {
		others = append(others, an.Name)
	}
	return matches[0], others
}
