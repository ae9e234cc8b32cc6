/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"github.com/hoststack/hoststack/api/rulematch"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// ruleOf is a SessionRule as api/rulematch (shared with the engine) sees
// it; false when its CIDRs do not parse (the schema refuses such rules,
// so only objects stored before it could have them; they match nothing).
func ruleOf(r *hsv1.SessionRule) (rulematch.Rule, bool) {
	local, lerr := rulematch.Prefix(r.Spec.Local.CIDR)
	remote, rerr := rulematch.Prefix(r.Spec.Remote.CIDR)
	if lerr != nil || rerr != nil {
		return rulematch.Rule{}, false
	}
	return rulematch.Rule{
		Match: rulematch.Match{
			AppNamespace: r.Namespace + "/" + r.Spec.AppNamespaceRef.Name,
			Scope:        string(r.Spec.Scope),
			Transport:    string(r.Spec.Transport),
			Local:        local, LocalPort: uint16(r.Spec.Local.Port),
			Remote: remote, RemotePort: uint16(r.Spec.Remote.Port),
		},
		Created: r.CreationTimestamp.Time,
		Name:    r.Namespace + "/" + r.Name,
	}, true
}

// findConflict returns the rule of peers that rule conflicts with and
// loses to (rulematch.Resolve: the oldest with the same match), or nil
// when rule applies. Peers are the rules of the same namespace; rule
// itself and rules being deleted are ignored, so deleting the winner
// hands the match to the next oldest.
func findConflict(rule *hsv1.SessionRule, peers []hsv1.SessionRule) *hsv1.SessionRule {
	self, ok := ruleOf(rule)
	if !ok {
		return nil
	}
	all := []rulematch.Rule{self}
	from := []*hsv1.SessionRule{rule}
	for i := range peers {
		p := &peers[i]
		if (p.Namespace == rule.Namespace && p.Name == rule.Name) || p.DeletionTimestamp != nil {
			continue
		}
		if r, ok := ruleOf(p); ok && r.Match == self.Match {
			all = append(all, r)
			from = append(from, p)
		}
	}
	_, winner := rulematch.Resolve(all)
	if winner[0] < 0 {
		return nil
	}
	return from[winner[0]]
}
