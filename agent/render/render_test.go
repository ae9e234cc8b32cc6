package render

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/session"
)

func appns(ns, name string, mut ...func(*hsv1.AppNamespace)) hsv1.AppNamespace {
	a := hsv1.AppNamespace{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	a.Spec.Network.Mode = hsv1.NetworkModePodNetwork
	for _, m := range mut {
		m(&a)
	}
	return a
}

func q(s string) *resource.Quantity { v := resource.MustParse(s); return &v }

func TestRender(t *testing.T) {
	now := metav1.Now()
	cases := []struct {
		name      string
		in        Input
		wantKeys  []string
		check     func(t *testing.T, out Output)
		wantProbs []string // substrings, one per problem, in order
	}{
		{
			name:     "sorted by key, defaults left to the engine",
			in:       Input{AppNamespaces: []hsv1.AppNamespace{appns("b", "x"), appns("a", "y"), appns("a", "x")}},
			wantKeys: []string{"a/x", "a/y", "b/x"},
			check: func(t *testing.T, out Output) {
				if got := out.Namespaces[0]; !reflect.DeepEqual(got, session.NamespaceConfig{Namespace: "a", Name: "x"}) {
					t.Errorf("unset fields must stay zero for engine defaults, got %+v", got)
				}
			},
		},
		{
			name: "sizes converted, fifos rounded up to powers of two, own segment counted",
			in: Input{AppNamespaces: []hsv1.AppNamespace{appns("a", "x", func(a *hsv1.AppNamespace) {
				a.Spec.Segments = hsv1.SegmentsSpec{SegmentSize: q("64Mi"), RxFIFOSize: q("1Mi"), TxFIFOSize: q("100Ki"), MaxSegmentsPerApp: ptr.To[int32](4)}
				a.Spec.Quotas = hsv1.QuotasSpec{MaxApps: ptr.To[int32](3), MaxSessionsPerApp: ptr.To[int32](7)}
			})}},
			wantKeys: []string{"a/x"},
			check: func(t *testing.T, out Output) {
				want := session.NamespaceConfig{Namespace: "a", Name: "x", SegmentSize: 64 << 20, RxFifoSize: 1 << 20,
					TxFifoSize: 128 << 10, MaxSegmentsPerApp: 5, MaxApps: 3, MaxSessionsPerApp: 7}
				if got := out.Namespaces[0]; !reflect.DeepEqual(got, want) {
					t.Errorf("got %+v\nwant %+v", got, want)
				}
			},
		},
		{
			name: "node selector applies on a node, not in standalone",
			in: Input{NodeLabels: map[string]string{"zone": "a"}, AppNamespaces: []hsv1.AppNamespace{
				appns("n", "match", func(a *hsv1.AppNamespace) { a.Spec.NodeSelector = map[string]string{"zone": "a"} }),
				appns("n", "other", func(a *hsv1.AppNamespace) { a.Spec.NodeSelector = map[string]string{"zone": "b"} }),
			}},
			wantKeys: []string{"n/match"},
		},
		{
			name: "standalone ignores node selectors",
			in: Input{AppNamespaces: []hsv1.AppNamespace{
				appns("n", "other", func(a *hsv1.AppNamespace) { a.Spec.NodeSelector = map[string]string{"zone": "b"} }),
			}},
			wantKeys: []string{"n/other"},
		},
		{
			name: "being deleted is not served",
			in: Input{AppNamespaces: []hsv1.AppNamespace{
				appns("n", "gone", func(a *hsv1.AppNamespace) { a.DeletionTimestamp = &now }),
			}},
		},
		{
			name: "secret resolved, missing and empty secrets are problems",
			in: Input{
				Secrets: map[string]string{"n/good": "s3cret", "n/empty": ""},
				AppNamespaces: []hsv1.AppNamespace{
					appns("n", "a", func(a *hsv1.AppNamespace) { a.Spec.SecretRef = &hsv1.SecretReference{Name: "good"} }),
					appns("n", "b", func(a *hsv1.AppNamespace) { a.Spec.SecretRef = &hsv1.SecretReference{Name: "missing"} }),
					appns("n", "c", func(a *hsv1.AppNamespace) { a.Spec.SecretRef = &hsv1.SecretReference{Name: "empty"} }),
				}},
			wantKeys:  []string{"n/a"},
			check:     func(t *testing.T, out Output) { checkSecret(t, out, "s3cret") },
			wantProbs: []string{"spec.secretRef.name: Secret n/missing", "spec.secretRef.name: Secret n/empty"},
		},
		{
			name: "sizing the engine cannot serve is a problem naming spec.segments",
			in: Input{AppNamespaces: []hsv1.AppNamespace{appns("a", "x", func(a *hsv1.AppNamespace) {
				a.Spec.Segments = hsv1.SegmentsSpec{SegmentSize: q("1Mi"), RxFIFOSize: q("1Mi"), TxFIFOSize: q("1Mi")}
			})}},
			wantProbs: []string{"spec.segments"},
		},
		{
			name: "Interface mode: the stack's addresses, gateways and driver; shared network",
			in: Input{AppNamespaces: []hsv1.AppNamespace{appns("a", "x", func(a *hsv1.AppNamespace) {
				a.Spec.Network = hsv1.AppNamespaceNetwork{Mode: hsv1.NetworkModeInterface, Interface: &hsv1.NetworkInterface{
					Name: "eth1", VRF: ptr.To[int64](7), Addresses: []string{"192.0.2.10/24", "2001:db8::10/64"},
					IPv4Gateway: "192.0.2.1", IPv6Gateway: "2001:db8::1"}}
			})}},
			wantKeys: []string{"a/x"},
			check: func(t *testing.T, out Output) {
				want := []Interface{{Namespace: "a/x", Name: "eth1", VRF: 7, Driver: hsv1.LinkDriverAFXDP,
					Addrs:    []netip.Prefix{netip.MustParsePrefix("192.0.2.10/24"), netip.MustParsePrefix("2001:db8::10/64")},
					Gateways: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}}}
				if !reflect.DeepEqual(out.Interfaces, want) {
					t.Errorf("interfaces %+v\nwant %+v", out.Interfaces, want)
				}
				if !out.Namespaces[0].SharedNetwork {
					t.Error("an Interface-mode namespace must share one network identity")
				}
			},
		},
		{
			name: "Interface mode: bad addresses and gateways are problems naming the field",
			in: Input{AppNamespaces: []hsv1.AppNamespace{appns("a", "x", func(a *hsv1.AppNamespace) {
				a.Spec.Network = hsv1.AppNamespaceNetwork{Mode: hsv1.NetworkModeInterface, Interface: &hsv1.NetworkInterface{
					Name: "eth1", VRF: ptr.To[int64](0), Addresses: []string{"192.0.2.10/24", "nope"}, IPv6Gateway: "2001:db8::1"}}
			})}},
			wantProbs: []string{"spec.network.interface.addresses[1]", "spec.network.interface.ipv6Gateway"},
		},
		{
			name: "Interface mode: one stack per interface, the older AppNamespace keeps it",
			in: Input{AppNamespaces: []hsv1.AppNamespace{
				appns("a", "young", func(a *hsv1.AppNamespace) {
					a.CreationTimestamp = metav1.NewTime(now.Add(time.Hour))
					a.Spec.Network = hsv1.AppNamespaceNetwork{Mode: hsv1.NetworkModeInterface, Interface: &hsv1.NetworkInterface{
						Name: "eth1", VRF: ptr.To[int64](0), Addresses: []string{"192.0.2.11/24"}, Driver: hsv1.LinkDriverAFPacket}}
				}),
				appns("b", "old", func(a *hsv1.AppNamespace) {
					a.CreationTimestamp = now
					a.Spec.Network = hsv1.AppNamespaceNetwork{Mode: hsv1.NetworkModeInterface, Interface: &hsv1.NetworkInterface{
						Name: "eth1", VRF: ptr.To[int64](0), Addresses: []string{"192.0.2.10/24"}}}
				}),
			}},
			wantKeys:  []string{"b/old"},
			wantProbs: []string{"interface eth1 is already used by AppNamespace b/old"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := Render(tc.in)
			var keys []string
			for _, n := range out.Namespaces {
				keys = append(keys, n.Key())
			}
			if !reflect.DeepEqual(keys, tc.wantKeys) {
				t.Fatalf("keys = %v, want %v", keys, tc.wantKeys)
			}
			if len(out.Problems) != len(tc.wantProbs) {
				t.Fatalf("problems = %v, want %d", out.Problems, len(tc.wantProbs))
			}
			for i, w := range tc.wantProbs {
				if !strings.Contains(out.Problems[i].String(), w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, out.Problems[i], w)
				}
			}
			if tc.check != nil {
				tc.check(t, out)
			}
			// Pure: rendering again gives the same output.
			if again := Render(tc.in); !reflect.DeepEqual(again, out) {
				t.Errorf("render is not deterministic")
			}
		})
	}
}

func checkSecret(t *testing.T, out Output, want string) {
	t.Helper()
	if out.Namespaces[0].Secret != want {
		t.Errorf("secret = %q, want %q", out.Namespaces[0].Secret, want)
	}
}

func rule(ns, name, appns string, mut ...func(*hsv1.SessionRule)) hsv1.SessionRule {
	r := hsv1.SessionRule{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	r.Spec = hsv1.SessionRuleSpec{
		AppNamespaceRef: hsv1.AppNamespaceReference{Name: appns},
		Scope:           hsv1.RuleScopeLocal, Transport: hsv1.TransportTCP,
		Local:  hsv1.RuleEndpoint{CIDR: "0.0.0.0/0"},
		Remote: hsv1.RuleEndpoint{CIDR: "10.0.0.0/8", Port: 80},
		Action: hsv1.RuleAction{Type: hsv1.RuleActionDeny},
	}
	for _, m := range mut {
		m(&r)
	}
	return r
}

func TestRenderRules(t *testing.T) {
	created := metav1.NewTime(metav1.Now().Rfc3339Copy().Time)
	in := Input{
		AppNamespaces: []hsv1.AppNamespace{appns("team", "web")},
		SessionRules: []hsv1.SessionRule{
			rule("team", "z-deny", "web", func(r *hsv1.SessionRule) { r.CreationTimestamp = created; r.Spec.Tag = "t" }),
			rule("team", "a-redirect", "web", func(r *hsv1.SessionRule) {
				r.Spec.Scope = hsv1.RuleScopeGlobal
				r.Spec.Local = hsv1.RuleEndpoint{CIDR: "fd00::/64", Port: 8080}
				r.Spec.Remote = hsv1.RuleEndpoint{CIDR: "::/0"}
				r.Spec.Action = hsv1.RuleAction{Type: hsv1.RuleActionRedirect, Redirect: &hsv1.RedirectAction{App: "proxy"}}
			}),
			rule("team", "orphan", "missing"),
			rule("other", "wrong-namespace", "web"), // AppNamespaces are per Kubernetes namespace
			rule("team", "gone", "web", func(r *hsv1.SessionRule) { n := metav1.Now(); r.DeletionTimestamp = &n }),
		},
	}
	out := Render(in)
	if len(out.Rules) != 2 {
		t.Fatalf("rules = %v, want 2", out.Rules)
	}
	red, deny := out.Rules[0], out.Rules[1]
	if red.Name != "team/a-redirect" || red.Namespace != "team/web" || red.Action.String() != "Redirect" ||
		red.RedirectApp != "proxy" || red.LocalPort != 8080 || red.Local.String() != "fd00::/64" || red.Scope.String() != "Global" {
		t.Errorf("redirect rule rendered as %+v", red)
	}
	if deny.Name != "team/z-deny" || deny.Tag != "t" || !deny.Created.Equal(created.Time) || deny.RemotePort != 80 || deny.Action.String() != "Deny" {
		t.Errorf("deny rule rendered as %+v", deny)
	}
	want := []string{"SessionRule team/orphan: spec.appNamespaceRef.name: AppNamespace team/missing not found",
		"SessionRule other/wrong-namespace: spec.appNamespaceRef.name: AppNamespace other/web not found"}
	if len(out.Problems) != len(want) {
		t.Fatalf("problems = %v", out.Problems)
	}
	for i, w := range want {
		if !strings.Contains(out.Problems[i].String(), w) {
			t.Errorf("problem %d = %q, want %q", i, out.Problems[i], w)
		}
	}

	// On a node, a rule of an app namespace this node does not serve is
	// simply not rendered (the controller reports missing ones).
	in.NodeLabels = map[string]string{}
	if out := Render(in); len(out.Problems) != 0 || len(out.Rules) != 2 {
		t.Errorf("on a node: rules %d problems %v", len(out.Rules), out.Problems)
	}
}
