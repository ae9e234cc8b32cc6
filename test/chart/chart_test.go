// Package chart tests the Helm chart charts/hoststack and its kustomize
// twin config/default: rendered with Helm's Go SDK for several value sets,
// every object is applied with a server-side dry run to a real
// kube-apiserver whose Pod Security admission enforces the namespaces'
// labels, with a Pod made from each workload's template (admission
// enforces Pod Security on Pods; on Deployments and DaemonSets it only
// warns).
package chart

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/hoststack/hoststack/internal/testreq"
)

const (
	chartDir     = "../../charts/hoststack"
	kustomizeDir = "../../config/default"
	release      = "hoststack"
	// The namespace the README's `helm install -n` names; the test labels
	// it restricted, as the README tells users to.
	releaseNS = "hoststack-system"
	// The API server version the chart's kubeVersion is checked against:
	// the envtest assets' (hack/envtest-assets.sh).
	kubeVersion = "v1.37.2"
)

var (
	testEnv    *envtest.Environment
	k8s        client.Client
	warnings   = &warningLog{}
	notRunning string
)

// warningLog collects the API server's warnings (Pod Security reports
// violations of Deployments and DaemonSets only as warnings).
type warningLog struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningLog) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warningLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	dir, missing, err := testreq.AssetsForMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	if missing != "" {
		notRunning = missing
		return m.Run()
	}
	// Only the kinds of other projects the chart can render; the chart's
	// own CRDs are part of what is dry-run applied.
	testEnv = &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDs: []*apiextv1.CustomResourceDefinition{
			minimalCRD("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
			minimalCRD("cert-manager.io", "Issuer", "issuers"),
			minimalCRD("cert-manager.io", "Certificate", "certificates"),
		},
	}
	cfg, err := testEnv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: start envtest:", err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop envtest:", err)
		}
	}()
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = warnings
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: client:", err)
		return 1
	}
	return m.Run()
}

func needAPIServer(t *testing.T) {
	t.Helper()
	if notRunning != "" {
		testreq.Missing(t, notRunning)
	}
}

// minimalCRD accepts any object of a kind the test does not install for
// real (ServiceMonitor, cert-manager's Issuer and Certificate): the dry run
// then checks the rendered object's group, version, kind, scope and
// metadata; the fields are the other project's business.
func minimalCRD(group, kind, plural string) *apiextv1.CustomResourceDefinition {
	preserve := true
	return &apiextv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: plural + "." + group},
		Spec: apiextv1.CustomResourceDefinitionSpec{
			Group: group,
			Names: apiextv1.CustomResourceDefinitionNames{Kind: kind, ListKind: kind + "List", Plural: plural, Singular: strings.ToLower(kind)},
			Scope: apiextv1.NamespaceScoped,
			Versions: []apiextv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextv1.CustomResourceValidation{OpenAPIV3Schema: &apiextv1.JSONSchemaProps{
					Type: "object", XPreserveUnknownFields: &preserve,
				}},
			}},
		},
	}
}

// rendered is one rendering of the chart.
type rendered struct {
	objs  []*unstructured.Unstructured // CRDs first, then templates by file name
	notes string
}

// render renders the chart as `helm install hoststack charts/hoststack -n
// hoststack-system --include-crds -f values` would, values being YAML.
func render(values string) (*rendered, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	if !chartutil.IsCompatibleRange(chrt.Metadata.KubeVersion, kubeVersion) {
		return nil, fmt.Errorf("chart kubeVersion %q excludes %s", chrt.Metadata.KubeVersion, kubeVersion)
	}
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, err
	}
	caps.KubeVersion = *kv
	top, err := chartutil.ToRenderValues(chrt, vals, chartutil.ReleaseOptions{Name: release, Namespace: releaseNS, Revision: 1, IsInstall: true}, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(chrt, top)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	r := &rendered{}
	for _, crd := range chrt.CRDObjects() {
		objs, err := parseDocs(crd.Filename, string(crd.File.Data))
		if err != nil {
			return nil, err
		}
		r.objs = append(r.objs, objs...)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasSuffix(n, "NOTES.txt") {
			r.notes = files[n]
			continue
		}
		objs, err := parseDocs(n, files[n])
		if err != nil {
			return nil, err
		}
		r.objs = append(r.objs, objs...)
	}
	return r, nil
}

// parseDocs parses the YAML documents of one file, skipping empty ones.
func parseDocs(file, text string) ([]*unstructured.Unstructured, error) {
	docs := releaseutil.SplitManifests(text)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	var out []*unstructured.Unstructured
	for _, k := range keys {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(docs[k]), &u.Object); err != nil {
			return nil, fmt.Errorf("%s: %w\n%s", file, err, docs[k])
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, u)
	}
	return out, nil
}

// kustomize renders config/default as `kubectl apply -k` would.
func kustomize() ([]*unstructured.Unstructured, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), kustomizeDir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", kustomizeDir, err)
	}
	b, err := m.AsYaml()
	if err != nil {
		return nil, err
	}
	return parseDocs(kustomizeDir, string(b))
}

// ensureNamespace creates ns with exactly labels, or sets them on the one
// a previous case created.
func ensureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	err := k8s.Create(ctx, ns)
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	if err := k8s.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
		return err
	}
	ns.Labels = labels
	return k8s.Update(ctx, ns)
}

// apply creates the Namespaces of objs for real, then every other object
// with a server-side dry run and, for each Deployment and DaemonSet, a Pod
// of its template, so Pod Security admission judges what the workload
// would run. It returns every refusal, and every Pod Security warning.
func apply(t *testing.T, objs []*unstructured.Unstructured) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			if err := ensureNamespace(ctx, o.GetName(), o.GetLabels()); err != nil {
				errs = append(errs, fmt.Errorf("Namespace %s: %w", o.GetName(), err))
			}
		}
	}
	warnings.take()
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			continue
		}
		what := fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
		if err := k8s.Create(ctx, o.DeepCopy(), client.DryRunAll); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
		var tmpl *corev1.PodTemplateSpec
		switch o.GetKind() {
		case "Deployment":
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", what, err))
				continue
			}
			tmpl = &d.Spec.Template
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &d); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", what, err))
				continue
			}
			tmpl = &d.Spec.Template
		default:
			continue
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: o.GetName() + "-pod", Namespace: o.GetNamespace(), Labels: tmpl.Labels, Annotations: tmpl.Annotations},
			Spec:       tmpl.Spec,
		}
		pod.Spec.NodeName = "node-1" // as the scheduler (or the DaemonSet controller) would
		if err := k8s.Create(ctx, pod, client.DryRunAll); err != nil {
			errs = append(errs, fmt.Errorf("pod of %s: %w", what, err))
		}
	}
	for _, w := range warnings.take() {
		if strings.Contains(w, "PodSecurity") {
			errs = append(errs, fmt.Errorf("warning: %s", w))
		}
	}
	return errors.Join(errs...)
}

// valueSets are the configurations every test renders: the defaults and
// the options that change which objects there are or what the pods mount.
var valueSets = map[string]string{
	"default": ``,
	"cert-manager": `
webhook:
  certManager:
    enabled: true
`,
	"cert-manager-cluster-issuer": `
webhook:
  certManager:
    enabled: true
    issuerRef: {name: corp-ca, kind: ClusterIssuer}
`,
	"microk8s-paths": `
hostPaths:
  kubeletDir: /var/snap/microk8s/common/var/lib/kubelet
  cniBinDir: /var/snap/microk8s/current/opt/cni/bin
  cniConfDir: /var/snap/microk8s/args/cni-network
`,
	"digest-and-pull-secrets": `
image:
  registry: registry.example.com:5000/mirror
  pullSecrets: [regcred]
manager:
  image:
    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
agent:
  image:
    tag: v9.9.9
`,
	"service-monitor": `
metrics:
  serviceMonitor:
    enabled: true
    labels: {release: prometheus}
`,
	"one-replica-existing-namespace": `
manager:
  replicas: 1
  leaderElection: false
agent:
  namespace: {name: hoststack-node, create: false}
`,
}

// Every value set renders objects the API server accepts, with every Pod
// admitted under Pod Security: restricted for the manager's namespace,
// privileged for the agent's.
func TestChartInstallsUnderPodSecurity(t *testing.T) {
	needAPIServer(t)
	ctx := context.Background()
	if err := ensureNamespace(ctx, releaseNS, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}); err != nil {
		t.Fatal(err)
	}
	for name, values := range valueSets {
		t.Run(name, func(t *testing.T) {
			r, err := render(values)
			if err != nil {
				t.Fatal(err)
			}
			objs := r.objs
			if name == "one-replica-existing-namespace" {
				// The namespace the user made, labelled as values.yaml says.
				if err := ensureNamespace(ctx, "hoststack-node", map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}); err != nil {
					t.Fatal(err)
				}
			}
			if err := apply(t, objs); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(r.notes, "hoststack-node") {
				t.Errorf("NOTES.txt does not name the agent's namespace:\n%s", r.notes)
			}
		})
	}
}

// config/default installs under Pod Security the same way: its Namespaces
// carry the labels (hoststack-system restricted, hoststack-node
// privileged) and every Pod is admitted.
func TestKustomizeInstallsUnderPodSecurity(t *testing.T) {
	needAPIServer(t)
	objs, err := kustomize()
	if err != nil {
		t.Fatal(err)
	}
	if err := apply(t, objs); err != nil {
		t.Fatal(err)
	}
	var ns corev1.Namespace
	if err := k8s.Get(context.Background(), client.ObjectKey{Name: releaseNS}, &ns); err != nil {
		t.Fatal(err)
	}
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("%s labels %v: the manager's namespace is not restricted", releaseNS, ns.Labels)
	}
}

// The layout before the chart (the agent in the manager's restricted
// namespace) is refused, Pods included: what TestChartInstallsUnderPodSecurity
// guards against.
func TestPodSecurityRejectsAgentInRestrictedNamespace(t *testing.T) {
	needAPIServer(t)
	if err := ensureNamespace(context.Background(), releaseNS, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}); err != nil {
		t.Fatal(err)
	}
	r, err := render("agent:\n  namespace: {name: " + releaseNS + ", create: false}\n")
	if err != nil {
		t.Fatal(err)
	}
	err = apply(t, r.objs)
	if err == nil {
		t.Fatal("the agent's pod was admitted to a restricted namespace")
	}
	t.Log(err)
	msg := err.Error()
	for _, want := range []string{"pod of DaemonSet " + releaseNS + "/hoststack-agent", `violates PodSecurity "restricted`, "hostNetwork", "privileged", "hostPath"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal does not say %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "hoststack-manager") {
		t.Errorf("the manager was refused too:\n%s", msg)
	}
}

// config/default (kustomize) installs the same objects as the chart with
// default values: same kinds, names and namespaces, and equal contents
// (images, arguments, security contexts, RBAC rules, webhook rules, CRDs)
// apart from Helm's own labels. The only extra object is the manager's
// Namespace, which `helm install --create-namespace` creates instead.
func TestKustomizeMatchesChart(t *testing.T) {
	r, err := render("")
	if err != nil {
		t.Fatal(err)
	}
	k, err := kustomize()
	if err != nil {
		t.Fatal(err)
	}
	key := func(o *unstructured.Unstructured) string {
		return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
	}
	fromChart := map[string]*unstructured.Unstructured{}
	for _, o := range r.objs {
		fromChart[key(o)] = o
	}
	fromKustomize := map[string]*unstructured.Unstructured{}
	for _, o := range k {
		fromKustomize[key(o)] = o
	}
	for kk, ko := range fromKustomize {
		co, ok := fromChart[kk]
		if !ok {
			if kk != "Namespace /"+releaseNS {
				t.Errorf("config/default has %s, the chart does not", kk)
			}
			continue
		}
		if d := cmp.Diff(normalize(ko), normalize(co)); d != "" {
			t.Errorf("%s differs (-kustomize +chart):\n%s", kk, d)
		}
	}
	for kk := range fromChart {
		if _, ok := fromKustomize[kk]; !ok {
			t.Errorf("the chart has %s, config/default does not", kk)
		}
	}
	// Sanity: what the comparison relies on is there.
	for _, want := range []string{"Deployment " + releaseNS + "/hoststack-manager", "DaemonSet hoststack-node/hoststack-agent",
		"Namespace /hoststack-node", "MutatingWebhookConfiguration /hoststack-pod-injector", "CSIDriver /csi.hoststack.dev",
		"CustomResourceDefinition /appnamespaces.hoststack.dev", "Role hoststack-node/hoststack-agent"} {
		if fromChart[want] == nil {
			t.Errorf("the chart renders no %s", want)
		}
	}
}

// normalize drops what legitimately differs between the two installs:
// labels (Helm adds its own; Pod Security labels are kept) and
// annotations.
func normalize(o *unstructured.Unstructured) map[string]any {
	c := o.DeepCopy().Object
	strip := func(meta map[string]any) {
		if meta == nil {
			return
		}
		delete(meta, "annotations")
		if l, ok := meta["labels"].(map[string]any); ok {
			keep := map[string]any{}
			for k, v := range l {
				if strings.HasPrefix(k, "pod-security.kubernetes.io/") {
					keep[k] = v
				}
			}
			if len(keep) == 0 {
				delete(meta, "labels")
			} else {
				meta["labels"] = keep
			}
		}
	}
	meta, _ := c["metadata"].(map[string]any)
	strip(meta)
	if spec, ok := c["spec"].(map[string]any); ok {
		if tmpl, ok := spec["template"].(map[string]any); ok {
			tm, _ := tmpl["metadata"].(map[string]any)
			strip(tm)
			if len(tm) == 0 {
				delete(tmpl, "metadata")
			}
		}
	}
	return c
}

// Values the schema refuses fail the install with a message naming the
// value and what is wrong with it.
func TestSchemaRefusesWrongValues(t *testing.T) {
	for _, tc := range []struct{ name, values, want string }{
		{"typo", "manger: {replicas: 2}", "additional properties 'manger' not allowed"},
		{"zero replicas", "manager: {replicas: 0}", "/manager/replicas"},
		{"replicas as string", "manager: {replicas: \"two\"}", "/manager/replicas"},
		{"pull policy", "image: {pullPolicy: Sometimes}", "/image/pullPolicy"},
		{"bad digest", "manager: {image: {repository: hoststack-manager, digest: \"sha256:xyz\"}}", "/manager/image/digest"},
		{"relative host path", "hostPaths: {cniBinDir: opt/cni/bin}", "/hostPaths/cniBinDir"},
		{"transport", "agent: {transport: dpdk}", "/agent/transport"},
		{"uninstall mode", "agent: {cni: {uninstall: always}}", "/agent/cni/uninstall"},
		{"failure policy", "webhook: {failurePolicy: fail}", "/webhook/failurePolicy"},
		{"issuer kind", "webhook: {certManager: {enabled: true, issuerRef: {name: x, kind: Vault}}}", "/webhook/certManager/issuerRef/kind"},
		{"namespace name", "agent: {namespace: {name: Hoststack_Node}}", "/agent/namespace/name"},
		{"port", "agent: {metricsPort: 70000}", "/agent/metricsPort"},
		{"interval", "agent: {statusInterval: ten}", "/agent/statusInterval"},
		{"unknown agent key", "agent: {hostNetwork: false}", "additional properties 'hostNetwork' not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(tc.values)
			if err == nil {
				t.Fatalf("values %q were accepted", tc.values)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not name %q:\n%v", tc.want, err)
			}
		})
	}
}

// What the value sets change shows in the rendered objects.
func TestChartValues(t *testing.T) {
	find := func(t *testing.T, r *rendered, kind, ns, name string) *unstructured.Unstructured {
		t.Helper()
		for _, o := range r.objs {
			if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
				return o
			}
		}
		t.Fatalf("no %s %s/%s", kind, ns, name)
		return nil
	}
	container := func(t *testing.T, o *unstructured.Unstructured) map[string]any {
		t.Helper()
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		if len(cs) != 1 {
			t.Fatalf("%s: %d containers", o.GetName(), len(cs))
		}
		return cs[0].(map[string]any)
	}
	mustRender := func(t *testing.T, set string) *rendered {
		t.Helper()
		r, err := render(valueSets[set])
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	chartYAML, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta chart.Metadata
	if err := yaml.Unmarshal(chartYAML, &meta); err != nil {
		t.Fatal(err)
	}

	t.Run("default", func(t *testing.T) {
		r := mustRender(t, "default")
		m := container(t, find(t, r, "Deployment", releaseNS, "hoststack-manager"))
		if m["image"] != "ghcr.io/hoststack/hoststack-manager:"+meta.AppVersion {
			t.Errorf("manager image %v, want the appVersion tag", m["image"])
		}
		a := container(t, find(t, r, "DaemonSet", "hoststack-node", "hoststack-agent"))
		if a["image"] != "ghcr.io/hoststack/hoststack-agent:"+meta.AppVersion {
			t.Errorf("agent image %v", a["image"])
		}
		args := fmt.Sprint(a["args"])
		for _, want := range []string{"--cni-uninstall=when-removed", "--cni-binary=/opt/hoststack/bin/hoststack-cni"} {
			if !strings.Contains(args, want) {
				t.Errorf("agent args lack %s: %s", want, args)
			}
		}
		env := fmt.Sprint(a["env"])
		for _, want := range []string{"POD_NAME", "metadata.name", "POD_NAMESPACE", "metadata.namespace", "NODE_NAME"} {
			if !strings.Contains(env, want) {
				t.Errorf("agent env lacks %s: %s", want, env)
			}
		}
		find(t, r, "PodDisruptionBudget", releaseNS, "hoststack-manager")
		role := find(t, r, "Role", "hoststack-node", "hoststack-agent")
		rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
		if want := []any{
			map[string]any{"apiGroups": []any{"coordination.k8s.io"}, "resources": []any{"leases"}, "verbs": []any{"get", "create", "update"}},
			map[string]any{"apiGroups": []any{""}, "resources": []any{"secrets"}, "verbs": []any{"get", "list", "watch"}},
			map[string]any{"apiGroups": []any{"apps"}, "resources": []any{"daemonsets"}, "resourceNames": []any{"hoststack-agent"}, "verbs": []any{"get", "list", "watch"}},
		}; !reflect.DeepEqual(rules, want) {
			t.Errorf("agent Role rules %v, want %v", rules, want)
		}
	})
	t.Run("cert-manager", func(t *testing.T) {
		r := mustRender(t, "cert-manager")
		find(t, r, "Issuer", releaseNS, "hoststack-selfsigned")
		cert := find(t, r, "Certificate", releaseNS, "hoststack-webhook")
		if s, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName"); s != "hoststack-webhook-tls" {
			t.Errorf("Certificate secretName %q", s)
		}
		wh := find(t, r, "MutatingWebhookConfiguration", "", "hoststack-pod-injector")
		if a := wh.GetAnnotations()["cert-manager.io/inject-ca-from"]; a != releaseNS+"/hoststack-webhook" {
			t.Errorf("inject-ca-from %q", a)
		}
		d := find(t, r, "Deployment", releaseNS, "hoststack-manager")
		if args := fmt.Sprint(container(t, d)["args"]); !strings.Contains(args, "--manage-webhook-certs=false") {
			t.Errorf("manager args: %s", args)
		}
		vols, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "volumes")
		if fmt.Sprint(vols) != "[map[name:webhook-certs secret:map[secretName:hoststack-webhook-tls]]]" {
			t.Errorf("manager volumes %v", vols)
		}
		for _, o := range r.objs {
			if o.GetKind() == "Role" && o.GetName() == "hoststack-manager" {
				t.Error("with cert-manager the manager needs no Secret role")
			}
		}
	})
	t.Run("cluster issuer", func(t *testing.T) {
		r := mustRender(t, "cert-manager-cluster-issuer")
		cert := find(t, r, "Certificate", releaseNS, "hoststack-webhook")
		ref, _, _ := unstructured.NestedStringMap(cert.Object, "spec", "issuerRef")
		if ref["name"] != "corp-ca" || ref["kind"] != "ClusterIssuer" {
			t.Errorf("issuerRef %v", ref)
		}
		for _, o := range r.objs {
			if o.GetKind() == "Issuer" {
				t.Error("an Issuer was made although one is given")
			}
		}
	})
	t.Run("host paths", func(t *testing.T) {
		r := mustRender(t, "microk8s-paths")
		ds := find(t, r, "DaemonSet", "hoststack-node", "hoststack-agent")
		vols, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "volumes")
		paths := map[string]string{}
		for _, v := range vols {
			m := v.(map[string]any)
			paths[m["name"].(string)] = m["hostPath"].(map[string]any)["path"].(string)
		}
		want := map[string]string{
			"pods-dir":     "/var/snap/microk8s/common/var/lib/kubelet/pods",
			"registry-dir": "/var/snap/microk8s/common/var/lib/kubelet/plugins_registry",
			"plugin-dir":   "/var/snap/microk8s/common/var/lib/kubelet/plugins/csi.hoststack.dev",
			"cni-bin":      "/var/snap/microk8s/current/opt/cni/bin",
			"cni-conf":     "/var/snap/microk8s/args/cni-network",
		}
		for k, v := range want {
			if paths[k] != v {
				t.Errorf("volume %s: %q, want %q", k, paths[k], v)
			}
		}
		args := fmt.Sprint(container(t, ds)["args"])
		if !strings.Contains(args, "--csi-socket=/var/snap/microk8s/common/var/lib/kubelet/plugins/csi.hoststack.dev/csi.sock") {
			t.Errorf("agent args: %s", args)
		}
	})
	t.Run("digest", func(t *testing.T) {
		r := mustRender(t, "digest-and-pull-secrets")
		d := find(t, r, "Deployment", releaseNS, "hoststack-manager")
		if img := container(t, d)["image"]; img != "registry.example.com:5000/mirror/hoststack-manager@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" {
			t.Errorf("manager image %v", img)
		}
		ds := find(t, r, "DaemonSet", "hoststack-node", "hoststack-agent")
		if img := container(t, ds)["image"]; img != "registry.example.com:5000/mirror/hoststack-agent:v9.9.9" {
			t.Errorf("agent image %v", img)
		}
		for _, o := range []*unstructured.Unstructured{d, ds} {
			ps, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "imagePullSecrets")
			if fmt.Sprint(ps) != "[map[name:regcred]]" {
				t.Errorf("%s imagePullSecrets %v", o.GetName(), ps)
			}
		}
	})
	t.Run("service monitor", func(t *testing.T) {
		r := mustRender(t, "service-monitor")
		sm := find(t, r, "ServiceMonitor", releaseNS, "hoststack-manager")
		if sm.GetLabels()["release"] != "prometheus" {
			t.Errorf("labels %v", sm.GetLabels())
		}
		find(t, r, "ServiceMonitor", "hoststack-node", "hoststack-agent")
		find(t, r, "Service", "hoststack-node", "hoststack-agent-metrics")
	})
	t.Run("existing namespace", func(t *testing.T) {
		r := mustRender(t, "one-replica-existing-namespace")
		for _, o := range r.objs {
			if o.GetKind() == "Namespace" || o.GetKind() == "PodDisruptionBudget" {
				t.Errorf("rendered %s %s", o.GetKind(), o.GetName())
			}
			if o.GetName() == "hoststack-manager-leader-election" {
				t.Errorf("leader election RBAC without leader election")
			}
		}
	})
}
