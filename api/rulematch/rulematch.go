/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package rulematch is the one definition of when two SessionRules
// conflict and which of them applies, shared by the manager (which
// reports the loser's Conflict condition) and the engine (which compiles
// only the winner): two rules of one AppNamespace with the same Match
// conflict, and the older one — earlier creation time, then smaller name —
// applies. It imports only the standard library, so the engine depends on
// nothing of Kubernetes.
package rulematch

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Match is what a rule matches on, normalised: two rules with equal
// Matches would fight over the same table entry.
type Match struct {
	// AppNamespace is "namespace/name" of the rule's AppNamespace.
	AppNamespace string
	// Scope ("Local", "Global") and Transport ("TCP", "UDP"), as the API
	// spells them.
	Scope, Transport string
	// Local and Remote are canonical prefixes (host bits zero): see Prefix.
	Local, Remote         netip.Prefix
	LocalPort, RemotePort uint16
}

// Rule is a rule as conflict resolution sees it.
type Rule struct {
	Match Match
	// Created is the SessionRule's creation time (one-second resolution).
	Created time.Time
	// Name is "namespace/name" of the SessionRule; it breaks ties
	// between rules created in the same second.
	Name string
}

// Compare orders rules by age: negative when a is older than b (created
// earlier, or in the same instant with the smaller name), so the order is
// total and the same in every process.
func Compare(a, b *Rule) int {
	if c := a.Created.Compare(b.Created); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// Resolve returns the indexes of rules oldest first, and for each rule the
// index of the rule it conflicts with and loses to — the oldest rule of
// its Match — or -1 when it applies. The slice is not modified.
func Resolve(rules []Rule) (order, winner []int) {
	order = make([]int, len(rules))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return Compare(&rules[a], &rules[b]) })
	winner = make([]int, len(rules))
	first := make(map[Match]int, len(rules))
	for _, i := range order {
		if w, ok := first[rules[i].Match]; ok {
			winner[i] = w
			continue
		}
		first[rules[i].Match] = i
		winner[i] = -1
	}
	return order, winner
}

// Prefix parses a rule's CIDR into the canonical prefix Match holds (host
// bits cleared, so 10.0.0.1/8 and 10.0.0.0/8 are one match).
func Prefix(cidr string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("cidr %q: %w", cidr, err)
	}
	return p.Masked(), nil
}
