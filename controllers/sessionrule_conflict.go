/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"net/netip"
	"strings"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// ruleMatch is what a rule matches on; two rules of one AppNamespace with
// equal matches would fight over the same table entry.
type ruleMatch struct {
	scope      hsv1.RuleScope
	transport  hsv1.TransportProtocol
	local      string
	localPort  int32
	remote     string
	remotePort int32
}

// matchOf normalises a rule's match: prefixes are masked so that
// 10.0.0.1/8 and 10.0.0.0/8 compare equal even if the schema's canonical
// form check was bypassed (e.g. objects stored before it existed).
func matchOf(spec *hsv1.SessionRuleSpec) ruleMatch {
	return ruleMatch{
		scope:      spec.Scope,
		transport:  spec.Transport,
		local:      canonicalPrefix(spec.Local.CIDR),
		localPort:  spec.Local.Port,
		remote:     canonicalPrefix(spec.Remote.CIDR),
		remotePort: spec.Remote.Port,
	}
}

func canonicalPrefix(s string) string {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return strings.ToLower(s)
	}
	return p.Masked().String()
}

// olderThan orders rules by age: creation time, then name, because
// creation timestamps have one-second resolution and the order must be
// total and the same in every reconcile.
func olderThan(a, b *hsv1.SessionRule) bool {
	ta, tb := a.CreationTimestamp.Time, b.CreationTimestamp.Time
	if !ta.Equal(tb) {
		return ta.Before(tb)
	}
	return a.Name < b.Name
}

// findConflict returns the oldest rule among peers with the same match as
// rule, when it is older than rule: that rule wins and rule conflicts. Nil
// means rule is the oldest of its match and applies. Peers are the rules
// of the same AppNamespace; rule itself and rules being deleted are
// ignored, so deleting the winner hands the match to the next oldest.
func findConflict(rule *hsv1.SessionRule, peers []hsv1.SessionRule) *hsv1.SessionRule {
	want := matchOf(&rule.Spec)
	var winner *hsv1.SessionRule
	for i := range peers {
		p := &peers[i]
		if p.Namespace == rule.Namespace && p.Name == rule.Name {
			continue
		}
		if p.DeletionTimestamp != nil || p.Namespace != rule.Namespace ||
			p.Spec.AppNamespaceRef.Name != rule.Spec.AppNamespaceRef.Name {
			continue
		}
		if matchOf(&p.Spec) != want {
			continue
		}
		if olderThan(p, rule) && (winner == nil || olderThan(p, winner)) {
			winner = p
		}
	}
	return winner
}
