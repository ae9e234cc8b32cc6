package netpol

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	anpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
)

func nsSel(lbl map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: lbl}
}

// podsOf selects pods by label in namespaces by label.
func podsOf(ns, pods map[string]string) anpv1.AdminNetworkPolicyPeer {
	return anpv1.AdminNetworkPolicyPeer{Pods: &anpv1.NamespacedPodPeer{
		Namespaces: anpv1.NamespacedPeer{NamespaceSelector: nsSel(ns)}, PodSelector: metav1.LabelSelector{MatchLabels: pods}}}
}

func anp(name string, prio int32, subjectNS map[string]string, in ...anpv1.AdminNetworkPolicyIngressRule) anpv1.AdminNetworkPolicy {
	return anpv1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: anpv1.AdminNetworkPolicySpec{
		Priority: prio, Subject: anpv1.AdminNetworkPolicySubject{Namespaces: nsSel(subjectNS)}, Ingress: in}}
}

func anpIn(action anpv1.AdminNetworkPolicyRuleAction, from anpv1.AdminNetworkPolicyPeer, ports ...anpv1.AdminNetworkPolicyPort) anpv1.AdminNetworkPolicyIngressRule {
	r := anpv1.AdminNetworkPolicyIngressRule{Action: action, From: []anpv1.AdminNetworkPolicyPeer{from}}
	if len(ports) > 0 {
		r.Ports = &ports
	}
	return r
}

func TestAdminPrecedence(t *testing.T) {
	shop := map[string]string{"team": "shop"}
	ops := map[string]string{"team": "ops"}
	everyone := map[string]string{}
	allowAll := policy("shop", "allow-all", nil, ingressOnly, []networkingv1.NetworkPolicyIngressRule{{}}, nil)
	denyAll := policy("shop", "deny-all", nil, ingressOnly, nil, nil)
	baseline := func(action anpv1.BaselineAdminNetworkPolicyRuleAction, from anpv1.AdminNetworkPolicyPeer) anpv1.BaselineAdminNetworkPolicy {
		return anpv1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: anpv1.BaselineAdminNetworkPolicySpec{
			Subject: anpv1.AdminNetworkPolicySubject{Namespaces: nsSel(shop)},
			Ingress: []anpv1.BaselineAdminNetworkPolicyIngressRule{{Action: action, From: []anpv1.AdminNetworkPolicyPeer{from}}}}}
	}
	tests := []struct {
		name     string
		policies []networkingv1.NetworkPolicy
		admin    Admin
		from, to string
		port     int32
		allowed  bool
		kind     string // of the refusal
	}{
		{"ANP deny beats a NetworkPolicy allow", []networkingv1.NetworkPolicy{allowAll},
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{anp("no-ops", 10, shop, anpIn("Deny", podsOf(ops, nil)))}},
			"ops/prom", "shop/db", 5432, false, KindAdminNetworkPolicy},
		{"ANP allow beats a NetworkPolicy deny", []networkingv1.NetworkPolicy{denyAll},
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{anp("ops-in", 10, shop, anpIn("Allow", podsOf(ops, nil)))}},
			"ops/prom", "shop/db", 5432, true, ""},
		{"Pass hands the session to NetworkPolicy", []networkingv1.NetworkPolicy{denyAll},
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{
				anp("pass", 1, shop, anpIn("Pass", podsOf(everyone, nil))),
				anp("ops-in", 10, shop, anpIn("Allow", podsOf(ops, nil)))}},
			"ops/prom", "shop/db", 5432, false, KindNetworkPolicy},
		{"lower priority number first", nil,
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{
				anp("z-allow", 5, shop, anpIn("Allow", podsOf(ops, nil))),
				anp("a-deny", 50, shop, anpIn("Deny", podsOf(everyone, nil)))}},
			"ops/prom", "shop/db", 5432, true, ""},
		{"rule order within one ANP", nil,
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{
				anp("one", 5, shop, anpIn("Deny", podsOf(ops, nil)), anpIn("Allow", podsOf(everyone, nil)))}},
			"ops/prom", "shop/db", 5432, false, KindAdminNetworkPolicy},
		{"ANP ports: named port of the destination", nil,
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{
				anp("pg", 5, shop, anpIn("Deny", podsOf(everyone, nil), anpv1.AdminNetworkPolicyPort{NamedPort: ptr.To("pg")}))}},
			"shop/web", "shop/db", 5432, false, KindAdminNetworkPolicy},
		{"ANP ports: a range that misses", nil,
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{
				anp("range", 5, shop, anpIn("Deny", podsOf(everyone, nil), anpv1.AdminNetworkPolicyPort{PortRange: &anpv1.PortRange{Start: 6000, End: 7000}}))}},
			"shop/web", "shop/db", 5432, true, ""},
		{"baseline applies when no NetworkPolicy isolates", nil,
			Admin{BaselineAdminNetworkPolicies: []anpv1.BaselineAdminNetworkPolicy{baseline("Deny", podsOf(ops, nil))}},
			"ops/prom", "shop/db", 5432, false, KindBaselineNetworkPolicy},
		{"a NetworkPolicy that isolates overrides the baseline", []networkingv1.NetworkPolicy{allowAll},
			Admin{BaselineAdminNetworkPolicies: []anpv1.BaselineAdminNetworkPolicy{baseline("Deny", podsOf(ops, nil))}},
			"ops/prom", "shop/db", 5432, true, ""},
		{"Pass reaches the baseline", nil,
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{anp("pass", 1, shop, anpIn("Pass", podsOf(everyone, nil)))},
				BaselineAdminNetworkPolicies: []anpv1.BaselineAdminNetworkPolicy{baseline("Deny", podsOf(ops, nil))}},
			"ops/prom", "shop/db", 5432, false, KindBaselineNetworkPolicy},
		{"egress: ANP of the source", nil,
			Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Name: "ops-out"}, Spec: anpv1.AdminNetworkPolicySpec{
				Priority: 3, Subject: anpv1.AdminNetworkPolicySubject{Pods: &anpv1.NamespacedPodSubject{NamespaceSelector: *nsSel(ops), PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "prom"}}}},
				Egress: []anpv1.AdminNetworkPolicyEgressRule{{Action: "Deny", To: []anpv1.AdminNetworkPolicyPeer{{Namespaces: &anpv1.NamespacedPeer{NamespaceSelector: nsSel(shop)}}}}}}}}},
			"ops/prom", "shop/db", 5432, false, KindAdminNetworkPolicy},
	}
	pods, nss := node()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, problems := RenderAll(pods, nss, tt.policies, tt.admin)
			if len(problems) > 0 {
				t.Fatalf("problems: %v", problems)
			}
			uid := func(k string) string { return strings.Replace(k, "/", "-", 1) }
			s := Session{SrcUID: uid(tt.from), DstUID: uid(tt.to), Src: netip.MustParseAddr("10.0.1.3"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: corev1.ProtocolTCP, Port: tt.port}
			d := table.Decide(s)
			if d.Allowed != tt.allowed || (!d.Allowed && d.Kind != tt.kind) {
				t.Fatalf("got %+v (%s), want allowed=%v kind=%q", d, d.Reason(s), tt.allowed, tt.kind)
			}
		})
	}
}

func TestAdminProblemsAndDump(t *testing.T) {
	pods, nss := node()
	p := anp("same", 7, map[string]string{"team": "shop"}, anpIn("Deny", anpv1.AdminNetworkPolicyPeer{Namespaces: &anpv1.NamespacedPeer{SameLabels: []string{"team"}}}),
		anpIn("Allow", podsOf(map[string]string{}, map[string]string{"app": "web"}), anpv1.AdminNetworkPolicyPort{PortNumber: &anpv1.Port{Protocol: corev1.ProtocolTCP, Port: 5432}}))
	table, problems := RenderAll(pods, nss, nil, Admin{AdminNetworkPolicies: []anpv1.AdminNetworkPolicy{p}})
	if len(problems) != 1 || !strings.Contains(problems[0].Message, "sameLabels") || problems[0].Policy != "AdminNetworkPolicy/same" {
		t.Fatalf("problems: %+v", problems)
	}
	// the unsupported peer matches nothing: prom is not denied
	s := Session{SrcUID: "ops-prom", DstUID: "shop-db", Proto: corev1.ProtocolTCP, Port: 5432}
	if d := table.Decide(s); !d.Allowed {
		t.Fatalf("%+v", d)
	}
	var b strings.Builder
	if err := WriteEntries(&b, table.Dump()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "shop/db   ingress    AdminNetworkPolicy/same[7] Allow (ingress[1])  1 pods  TCP/5432") {
		t.Fatalf("dump:\n%s", b.String())
	}
}
