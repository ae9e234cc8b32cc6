package apply

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/agent/render"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/mux"
	"github.com/hoststack/hoststack/engine/transport/netstack"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/afpacket"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/afxdp"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/dpdk"
)

// Networks gives every app namespace its transport: a userspace stack per
// Interface-mode namespace (on its node interface, through its link driver)
// and the node's kernel transport for the others, routed by one mux, the
// engine's transport.
type Networks struct {
	mux    mux.Mux
	kernel session.Transport
	open   OpenStack
	logf   func(string, ...any)
	stacks map[string]*netStack // by namespace key
}

type netStack struct {
	spec render.Interface
	tr   *netstack.Transport
}

// OpenStack starts the userspace stack of an Interface-mode namespace.
type OpenStack func(render.Interface) (*netstack.Transport, error)

// NewNetworks returns Networks whose PodNetwork namespaces use kernel (nil:
// none) and whose Interface ones are opened with open (nil: OpenLink in the
// process's own network namespace).
func NewNetworks(kernel session.Transport, open OpenStack, logf func(string, ...any)) *Networks {
	if open == nil {
		open = func(ifc render.Interface) (*netstack.Transport, error) { return OpenLink(ifc, "") }
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	n := &Networks{kernel: kernel, open: open, logf: logf, stacks: map[string]*netStack{}}
	n.mux.Set(mux.Table{Default: kernel})
	return n
}

// Transport is the engine's transport.
func (n *Networks) Transport() session.Transport { return &n.mux }

// Apply opens, keeps, replaces or closes userspace stacks to match ifcs (a
// changed spec replaces the stack: its sessions are reset) and reroutes.
// It returns, by namespace key, why a stack could not be opened; such a
// namespace has no transport (it never falls back to the kernel).
func (n *Networks) Apply(ifcs []render.Interface) map[string]error {
	want := make(map[string]render.Interface, len(ifcs))
	for _, ifc := range ifcs {
		want[ifc.Namespace] = ifc
	}
	table := mux.Table{ByNamespace: map[string]session.Transport{}, Default: n.kernel}
	// Close what goes or changes first: a changed stack may keep its
	// interface (an XDP program or DPDK port cannot be opened twice).
	for key, st := range n.stacks {
		if w, ok := want[key]; ok && reflect.DeepEqual(w, st.spec) {
			continue
		}
		n.mux.Set(withNone(n.currentTable(), key))
		_ = st.tr.Close()
		delete(n.stacks, key)
		n.logf("userspace stack of %s on %s closed", key, st.spec.Name)
	}
	errs := map[string]error{}
	for key, ifc := range want {
		if _, ok := n.stacks[key]; !ok {
			tr, err := n.open(ifc)
			if err != nil {
				errs[key] = err
				table.ByNamespace[key] = nil
				continue
			}
			n.stacks[key] = &netStack{spec: ifc, tr: tr}
			n.logf("userspace stack of %s on %s (%s) open with %s", key, ifc.Name, ifc.Driver, prefixes(ifc.Addrs))
		}
		table.ByNamespace[key] = n.stacks[key].tr
	}
	n.mux.Set(table)
	return errs
}

// Stacks reports, by namespace key, the interface and driver of each open
// userspace stack.
func (n *Networks) Stacks() map[string]render.Interface {
	out := make(map[string]render.Interface, len(n.stacks))
	for k, st := range n.stacks {
		out[k] = st.spec
	}
	return out
}

func (n *Networks) currentTable() mux.Table {
	t := mux.Table{ByNamespace: map[string]session.Transport{}, Default: n.kernel}
	for k, st := range n.stacks {
		t.ByNamespace[k] = st.tr
	}
	return t
}

func withNone(t mux.Table, key string) mux.Table {
	t.ByNamespace[key] = nil
	return t
}

// Close closes every userspace stack.
func (n *Networks) Close() error {
	var errs []error
	n.mux.Set(mux.Table{Default: n.kernel})
	keys := make([]string, 0, len(n.stacks))
	for k := range n.stacks {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		errs = append(errs, n.stacks[k].tr.Close())
		delete(n.stacks, k)
	}
	return errors.Join(errs...)
}

// OpenLink opens ifc's link driver on the interface in the network
// namespace at netnsPath ("" the process's own) and starts a stack on it.
func OpenLink(ifc render.Interface, netnsPath string) (*netstack.Transport, error) {
	var ep stack.LinkEndpoint
	var err error
	switch ifc.Driver {
	case hsv1.LinkDriverAFXDP, "":
		ep, err = afxdp.New(afxdp.Options{Interface: ifc.Name, Netns: netnsPath, Addrs: ifc.Addrs})
	case hsv1.LinkDriverAFPacket:
		ep, err = afpacket.New(afpacket.Options{Interface: ifc.Name, Netns: netnsPath, Addrs: ifc.Addrs})
	case hsv1.LinkDriverDPDK:
		ep, err = dpdk.New(dpdk.Options{Interface: ifc.Name, Netns: netnsPath, Addrs: ifc.Addrs})
	default:
		return nil, fmt.Errorf("unknown link driver %q", ifc.Driver)
	}
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", ifc.Driver, ifc.Name, err)
	}
	var routes []netstack.Route
	for _, gw := range ifc.Gateways {
		dst := netip.MustParsePrefix("0.0.0.0/0")
		if gw.Is6() {
			dst = netip.MustParsePrefix("::/0")
		}
		routes = append(routes, netstack.Route{Dst: dst, Via: gw})
	}
	tr, err := netstack.New(netstack.Options{Link: ep, Addrs: ifc.Addrs, Routes: routes})
	if err != nil {
		ep.Close()
		return nil, err
	}
	return tr, nil
}

func prefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
