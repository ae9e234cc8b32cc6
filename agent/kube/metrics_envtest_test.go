package kube

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/onsi/gomega"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// scrapeNamespace holds the service accounts the tests scrape as.
const scrapeNamespace = "metrics-scrapers"

// serviceAccountToken returns a token of service account name of
// scrapeNamespace (created if needed), bound to the ClusterRole
// hoststack-metrics-reader of config/rbac when reader is set: what
// Prometheus presents.
func serviceAccountToken(t *testing.T, name string, reader bool) string {
	t.Helper()
	ctx := context.Background()
	for _, obj := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scrapeNamespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: scrapeNamespace, Name: name}},
	} {
		if err := k8s.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	if reader {
		role, err := os.ReadFile(filepath.Join("..", "..", "config", "rbac", "metrics_reader_role.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		createYAML(t, context.Background(), string(role), true)
		createYAML(t, context.Background(), `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: hoststack-metrics-reader-`+name+`}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: hoststack-metrics-reader}
subjects:
- {kind: ServiceAccount, namespace: `+scrapeNamespace+`, name: `+name+`}
`, true)
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: scrapeNamespace, Name: name}}
	if err := k8s.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("token of %s: %v", name, err)
	}
	return tr.Status.Token
}

// metricsToken is the token of a scraper allowed to read /metrics.
func metricsToken(t *testing.T) string { return serviceAccountToken(t, "prometheus", true) }

// scrape GETs https://addr/metrics as Prometheus does: the agent's own
// certificate (not verified), the token as bearer ("" sends none).
func scrape(t *testing.T, addr, token string) (int, string, error) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the agent's self-signed serving certificate
	req, err := http.NewRequest(http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestAgentMetricsAreAuthenticated: the agent, running as its own
// ClusterRole, serves /metrics over HTTPS only to callers the API server
// authenticates and authorizes (401 without a token, 403 for a service
// account not bound to hoststack-metrics-reader), and labels its series
// app_namespace, never namespace.
func TestAgentMetricsAreAuthenticated(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeName, ns := testNode(ctx, t, g, "metrics")
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: web}}
`)
	ap := startAgent(t, nodeName)
	reader, stranger := metricsToken(t), serviceAccountToken(t, "stranger", false)

	g.Eventually(func(g gomega.Gomega) {
		code, body, err := scrape(t, ap.metricsAddr, reader)
		g.Expect(err).NotTo(gomega.HaveOccurred())
		g.Expect(code).To(gomega.Equal(http.StatusOK), body)
		g.Expect(body).To(gomega.ContainSubstring(`hoststack_agent_apps{app_namespace="` + ns + `/web"} 0`))
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "hoststack_agent_") {
				g.Expect(line).NotTo(gomega.MatchRegexp(`[{,]namespace=`), "a series labelled namespace")
			}
		}
	}).WithTimeout(30 * time.Second).WithPolling(200 * time.Millisecond).Should(gomega.Succeed())

	code, _, err := scrape(t, ap.metricsAddr, "")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(code).To(gomega.Equal(http.StatusUnauthorized), "no token")
	code, _, err = scrape(t, ap.metricsAddr, stranger)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(code).To(gomega.Equal(http.StatusForbidden), "a service account without hoststack-metrics-reader")
	// Plain HTTP is not served.
	code, _, _ = httpGet("http://" + ap.metricsAddr + "/metrics")
	g.Expect(code).NotTo(gomega.Equal(http.StatusOK))
}
