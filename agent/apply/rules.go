package apply

import (
	"net/netip"

	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

// RuleLookup adapts a rules.Table to the engine's rule seam: sessions the
// engine cuts through between two apps of one app namespace are judged by
// the namespace's Local tables, sessions leaving through a transport by its
// Local and then its Global tables (the engine asks once per scope).
type RuleLookup struct{ Table *rules.Table }

var _ session.Rules = RuleLookup{}

// Lookup implements session.Rules.
//
// A cut-through session is judged once, from the connecting app's side
// (local = the address the session gets, remote = where it connects): the
// engine's second query, as the listener accepts, is the same session seen
// from the other end and is allowed here, so one rule never has to be
// written twice, mirrored. A session a transport accepts from the outside
// world (global scope) is judged as it arrives: local = the listener's
// address, remote = the peer.
func (l RuleLookup) Lookup(q session.RuleQuery) session.Verdict {
	if q.Dir == session.Accept && q.Scope == session.LocalScope {
		return session.Verdict{Action: session.Allow}
	}
	proto := rules.TCP
	if q.Proto == wire.UDP {
		proto = rules.UDP
	}
	local, remote := q.Local, q.Remote
	if !local.IsValid() {
		// A connect not yet bound: match it as coming from the wildcard
		// address of the remote's family, any port.
		local = netip.AddrPortFrom(unspecified(remote.Addr()), 0)
	}
	scope := rules.Local
	if q.Scope == session.GlobalScope {
		scope = rules.Global
	}
	r, ok := l.Table.Lookup(q.Namespace, scope, proto, local, remote)
	if !ok {
		return session.Verdict{Action: session.Allow}
	}
	v := session.Verdict{Rule: r.Name}
	switch r.Action {
	case rules.Deny:
		v.Action = session.Deny
	case rules.Redirect:
		v.Action = session.Redirect
		v.App = r.RedirectApp
	default:
		v.Action = session.Allow
	}
	return v
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is6() && !a.Is4In6() {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}
