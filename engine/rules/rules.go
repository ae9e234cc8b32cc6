package rules

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hoststack/hoststack/api/rulematch"
)

// Scope says which lookups a rule takes part in. The zero value is invalid.
type Scope uint8

const (
	// Local rules apply to lookups between apps of one AppNamespace
	// (cut-through sessions).
	Local Scope = 1 + iota
	// Global rules apply to sessions that go through a transport.
	Global
)

// Proto is the transport protocol a rule matches. The zero value is invalid.
type Proto uint8

const (
	TCP Proto = 1 + iota
	UDP
)

// Action is what a matching rule does. The zero value is invalid.
type Action uint8

const (
	Allow Action = 1 + iota
	Deny
	// Redirect hands the session to the app named Rule.RedirectApp of the
	// same AppNamespace.
	Redirect
)

var (
	scopeNames  = [...]string{Local: "Local", Global: "Global"}
	protoNames  = [...]string{TCP: "TCP", UDP: "UDP"}
	actionNames = [...]string{Allow: "Allow", Deny: "Deny", Redirect: "Redirect"}
)

func enumString(names []string, v uint8) string {
	if int(v) < len(names) && names[v] != "" {
		return names[v]
	}
	return fmt.Sprintf("invalid(%d)", v)
}

func enumParse(names []string, kind, s string) (uint8, error) {
	for i, n := range names {
		if n != "" && strings.EqualFold(n, s) {
			return uint8(i), nil
		}
	}
	return 0, fmt.Errorf("rules: unknown %s %q", kind, s)
}

func (s Scope) String() string  { return enumString(scopeNames[:], uint8(s)) }
func (p Proto) String() string  { return enumString(protoNames[:], uint8(p)) }
func (a Action) String() string { return enumString(actionNames[:], uint8(a)) }

// Valid reports whether s is Local or Global.
func (s Scope) Valid() bool { return s == Local || s == Global }

// Valid reports whether p is TCP or UDP.
func (p Proto) Valid() bool { return p == TCP || p == UDP }

// Valid reports whether a is Allow, Deny or Redirect.
func (a Action) Valid() bool { return a >= Allow && a <= Redirect }

// ParseScope accepts "Local" or "Global" (any case), the spelling of the
// SessionRule API.
func ParseScope(s string) (Scope, error) {
	v, err := enumParse(scopeNames[:], "scope", s)
	return Scope(v), err
}

// ParseProto accepts "TCP" or "UDP" (any case).
func ParseProto(s string) (Proto, error) {
	v, err := enumParse(protoNames[:], "transport", s)
	return Proto(v), err
}

// ParseAction accepts "Allow", "Deny" or "Redirect" (any case).
func ParseAction(s string) (Action, error) {
	v, err := enumParse(actionNames[:], "action", s)
	return Action(v), err
}

// Rule is one session rule, as rendered from a SessionRule object.
type Rule struct {
	// Namespace is the table owner: "namespace/name" of the AppNamespace.
	Namespace string
	Scope     Scope
	Proto     Proto
	// Local and Remote are canonical prefixes (host bits zero) of one
	// address family; 0.0.0.0/0 and ::/0 match any address of their family.
	Local, Remote netip.Prefix
	// LocalPort and RemotePort: 0 matches any port.
	LocalPort, RemotePort uint16
	Action                Action
	// RedirectApp is the app that receives the session; set exactly when
	// Action is Redirect.
	RedirectApp string
	// Name is "namespace/name" of the SessionRule the rule came from; it
	// identifies the rule and breaks ties between equally old rules.
	Name string
	Tag  string
	// Created is the SessionRule's creation time; of two rules with the same
	// match the older one wins.
	Created time.Time
}

// Family is 4 or 6, the address family of the rule's prefixes.
func (r *Rule) Family() int {
	if r.Remote.Addr().Is4() {
		return 4
	}
	return 6
}

func (r *Rule) String() string {
	s := fmt.Sprintf("%s %s/%s %s %s:%d -> %s:%d %s", r.Name, r.Namespace, r.Scope, r.Proto,
		r.Local, r.LocalPort, r.Remote, r.RemotePort, r.Action)
	if r.Action == Redirect {
		s += " " + r.RedirectApp
	}
	return s
}

// matchOf is the rule as api/rulematch sees it.
func matchOf(r *Rule) rulematch.Rule {
	return rulematch.Rule{
		Match: rulematch.Match{AppNamespace: r.Namespace, Scope: r.Scope.String(), Transport: r.Proto.String(),
			Local: r.Local, Remote: r.Remote, LocalPort: r.LocalPort, RemotePort: r.RemotePort},
		Created: r.Created, Name: r.Name,
	}
}

// olderThan is the manager's order (rulematch.Compare).
func olderThan(a, b *Rule) bool {
	ma, mb := matchOf(a), matchOf(b)
	return rulematch.Compare(&ma, &mb) < 0
}

// Validate checks one rule on its own: enums in range, non-empty namespace
// and name, valid canonical prefixes of one family, no IPv4-mapped IPv6
// prefix (write it as IPv4), and RedirectApp set exactly for Redirect.
func (r *Rule) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("rules: rule %q: %s", r.Name, fmt.Sprintf(format, args...))
	}
	switch {
	case r.Name == "":
		return bad("empty name")
	case r.Namespace == "":
		return bad("empty namespace")
	case !r.Scope.Valid():
		return bad("invalid scope %d", r.Scope)
	case !r.Proto.Valid():
		return bad("invalid transport %d", r.Proto)
	case !r.Action.Valid():
		return bad("invalid action %d", r.Action)
	case r.Action == Redirect && r.RedirectApp == "":
		return bad("action Redirect needs a redirect app")
	case r.Action != Redirect && r.RedirectApp != "":
		return bad("redirect app %q set on action %s", r.RedirectApp, r.Action)
	}
	for _, e := range []struct {
		name string
		p    netip.Prefix
	}{{"local", r.Local}, {"remote", r.Remote}} {
		if !e.p.IsValid() {
			return bad("%s prefix is not set or invalid", e.name)
		}
		if e.p != e.p.Masked() {
			return bad("%s prefix %s is not canonical (want %s)", e.name, e.p, e.p.Masked())
		}
		if e.p.Addr().Is4In6() && e.p.Bits() >= 96 {
			return bad("%s prefix %s is IPv4-mapped IPv6; write it as IPv4", e.name, e.p)
		}
	}
	if r.Local.Addr().Is4() != r.Remote.Addr().Is4() {
		return bad("local %s and remote %s are of different address families", r.Local, r.Remote)
	}
	return nil
}

// Conflict is a rule that does not apply because an older rule of the same
// table has the same match (prefixes and ports). Winner is the oldest rule
// of that match, the one that applies.
type Conflict struct {
	Loser, Winner Rule
}

func (c Conflict) String() string {
	return fmt.Sprintf("rule %q conflicts with older rule %q (same match)", c.Loser.Name, c.Winner.Name)
}

type tableKey struct {
	ns    string
	scope Scope
	proto Proto
}

// Set is an immutable compiled rule set: every table of every namespace.
// All methods are safe for concurrent use; a nil *Set has no rules.
type Set struct {
	tables    map[string]*nsTables
	n         int
	conflicts []Conflict
}

// nsTables are the tables of one namespace, indexed by [scope-1][proto-1].
type nsTables [2][2]*Subset

// Subset is the compiled table of one (namespace, scope, transport). Obtain
// it with Set.Subset to look up many sessions of one app without the
// namespace map lookup. A nil *Subset has no rules.
type Subset struct {
	v4, v6 *fam
}

// MaxRules is the most rules Compile accepts (the compiled structure
// indexes entries, up to three per rule, with 24 bits).
const MaxRules = 1 << 22

// Compile validates rules, resolves conflicts and builds a Set. It fails on
// the first invalid rule (the error names it) and on duplicate rule names.
// Rules with the same match in the same table conflict: the oldest wins
// (earlier Created, then smaller Name) and each other one is returned as a
// Conflict naming it. The input slice is not modified or retained.
func Compile(rules []Rule) (*Set, []Conflict, error) {
	if len(rules) > MaxRules {
		return nil, nil, fmt.Errorf("rules: %d rules, at most %d supported", len(rules), MaxRules)
	}
	names := make(map[string]struct{}, len(rules))
	for i := range rules {
		if err := rules[i].Validate(); err != nil {
			return nil, nil, err
		}
		if _, dup := names[rules[i].Name]; dup {
			return nil, nil, fmt.Errorf("rules: duplicate rule name %q", rules[i].Name)
		}
		names[rules[i].Name] = struct{}{}
	}
	// Which rule of a match applies is api/rulematch's decision, the same
	// code the manager reports conflicts with.
	entries := make([]rulematch.Rule, len(rules))
	for i := range rules {
		entries[i] = matchOf(&rules[i])
	}
	order, winner := rulematch.Resolve(entries)
	perTable := make(map[tableKey][]int32)
	var conflicts []Conflict
	for _, i := range order {
		r := &rules[i]
		if w := winner[i]; w >= 0 {
			conflicts = append(conflicts, Conflict{Loser: *r, Winner: rules[w]})
			continue
		}
		tk := tableKey{r.Namespace, r.Scope, r.Proto}
		perTable[tk] = append(perTable[tk], int32(i))
	}
	slices.SortFunc(conflicts, func(a, b Conflict) int {
		return cmp.Or(strings.Compare(a.Loser.Namespace, b.Loser.Namespace),
			strings.Compare(a.Loser.Name, b.Loser.Name))
	})
	s := &Set{tables: make(map[string]*nsTables), conflicts: conflicts}
	for tk, idx := range perTable {
		var v4, v6 []Rule
		for _, i := range idx {
			if rules[i].Remote.Addr().Is4() {
				v4 = append(v4, rules[i])
			} else {
				v6 = append(v6, rules[i])
			}
		}
		nt := s.tables[tk.ns]
		if nt == nil {
			nt = new(nsTables)
			s.tables[tk.ns] = nt
		}
		nt[tk.scope-1][tk.proto-1] = &Subset{v4: buildFam(v4), v6: buildFam(v6)}
		s.n += len(idx)
	}
	return s, conflicts, nil
}

// Len is the number of rules in the set (conflict losers not counted).
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Conflicts returns the conflicts found when the set was compiled.
func (s *Set) Conflicts() []Conflict {
	if s == nil {
		return nil
	}
	return slices.Clone(s.conflicts)
}

// Subset returns the compiled table of (ns, scope, proto), nil if it has no
// rules.
func (s *Set) Subset(ns string, scope Scope, proto Proto) *Subset {
	if s == nil {
		return nil
	}
	nt := s.tables[ns]
	if nt == nil || scope-1 > 1 || proto-1 > 1 {
		return nil
	}
	return nt[scope-1][proto-1]
}

// Lookup finds the most specific rule of table (ns, scope, proto) matching
// a session from local to remote. ok is false when no rule matches (or the
// two addresses are of different families, or invalid); the default is then
// Allow. IPv4-mapped IPv6 addresses are unmapped first. The returned rule
// belongs to the Set and must not be modified. Lookup does not allocate.
func (s *Set) Lookup(ns string, scope Scope, proto Proto, local, remote netip.AddrPort) (r *Rule, ok bool) {
	return s.Subset(ns, scope, proto).Lookup(local, remote)
}

// Lookup is Set.Lookup on one table.
func (t *Subset) Lookup(local, remote netip.AddrPort) (*Rule, bool) {
	if t == nil {
		return nil, false
	}
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	var f *fam
	switch {
	case la.Is4() && ra.Is4():
		f = t.v4
	case la.Is6() && ra.Is6():
		f = t.v6
	}
	if f == nil {
		return nil, false
	}
	lhi, llo := addrWords(la)
	rhi, rlo := addrWords(ra)
	i := f.lookup(lhi, llo, rhi, rlo, local.Port(), remote.Port())
	if i < 0 {
		return nil, false
	}
	return &f.rules[i], true
}

// Decide is Lookup reduced to the action, Allow when nothing matches.
func (s *Set) Decide(ns string, scope Scope, proto Proto, local, remote netip.AddrPort) (Action, *Rule) {
	if r, ok := s.Lookup(ns, scope, proto, local, remote); ok {
		return r.Action, r
	}
	return Allow, nil
}

// Dump lists the compiled rules (conflict losers excluded) in a stable
// order: namespace, scope, transport, family (IPv4 first), then precedence
// (the most specific first, see the package documentation), then remote
// prefix, local prefix, remote port, local port.
func (s *Set) Dump() []Rule {
	if s == nil {
		return nil
	}
	out := make([]Rule, 0, s.n)
	nss := make([]string, 0, len(s.tables))
	for ns := range s.tables {
		nss = append(nss, ns)
	}
	slices.Sort(nss)
	for _, ns := range nss {
		for sc := range 2 {
			for pr := range 2 {
				t := s.tables[ns][sc][pr]
				if t == nil {
					continue
				}
				if t.v4 != nil {
					out = append(out, t.v4.rules...)
				}
				if t.v6 != nil {
					out = append(out, t.v6.rules...)
				}
			}
		}
	}
	return out
}

// Table holds the current Set of an engine. Readers call Lookup (or Load);
// a writer compiles a new Set off to the side and Stores it: lookups never
// wait, and each one sees either the old or the new Set entirely. The zero
// value is ready and has no rules.
type Table struct {
	atomic.Pointer[Set]
}

// Lookup is Set.Lookup on the current Set.
func (t *Table) Lookup(ns string, scope Scope, proto Proto, local, remote netip.AddrPort) (*Rule, bool) {
	return t.Load().Lookup(ns, scope, proto, local, remote)
}

// Dump is Set.Dump of the current Set.
func (t *Table) Dump() []Rule { return t.Load().Dump() }
