/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package rulematch

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestResolve(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := Match{AppNamespace: "shop/web", Scope: "Local", Transport: "TCP",
		Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("10.0.0.0/8"), RemotePort: 5432}
	other := m
	other.RemotePort = 0
	rules := []Rule{
		{Match: m, Created: t0.Add(time.Second), Name: "shop/late"},
		{Match: m, Created: t0, Name: "shop/b"},
		{Match: m, Created: t0, Name: "shop/a"}, // same second: the name decides
		{Match: other, Created: t0.Add(time.Hour), Name: "shop/other"},
	}
	order, winner := Resolve(rules)
	if want := []int{2, 1, 0, 3}; !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	if want := []int{2, 2, -1, -1}; !slices.Equal(winner, want) {
		t.Errorf("winners %v, want %v", winner, want)
	}
	p, err := Prefix("10.1.2.3/8")
	if err != nil || p != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("Prefix: %v %v", p, err)
	}
	if _, err := Prefix("10.0.0.0/33"); err == nil {
		t.Error("Prefix accepted /33")
	}
}
