//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/cli"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"

	hoststackv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/internal/testreq"
)

// env is the cluster hack/cluster made, as `hack/cluster env` describes it.
type env struct {
	root       string // repository root
	kubeconfig string
	nodeName   string
	nodeIP     string
	cniConf    string // the primary conflist
	cniBinDir  string
	kubectl    string
	cs         *kubernetes.Clientset
	c          ctrlclient.Client
	imagesDir  string
	// scraperToken is a token of a service account bound to the chart's
	// hoststack-metrics-reader, for the agent's authenticated /metrics
	scraperToken string
}

// newEnv finds the cluster; without one the test fails under
// HOSTSTACK_REQUIRE_PRIVILEGED=1 and skips otherwise.
func newEnv(t *testing.T) *env {
	t.Helper()
	testreq.Root(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", "./hack/cluster", "env")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		testreq.Missing(t, fmt.Sprintf("hack/cluster env: %v", err))
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	e := &env{root: root, kubeconfig: vars["KUBECONFIG"], nodeName: vars["NODE_NAME"], nodeIP: vars["NODE_IP"],
		cniConf: vars["CNI_PRIMARY_CONFLIST"], cniBinDir: vars["CNI_BIN_DIR"], kubectl: vars["KUBECTL"]}
	if _, err := os.Stat(e.kubeconfig); err != nil {
		testreq.Missing(t, "no cluster: "+e.kubeconfig+" is missing; run `go run ./hack/cluster up` (or `make e2e`)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if e.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = hoststackv1.AddToScheme(scheme)
	if e.c, err = ctrlclient.New(cfg, ctrlclient.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.cs.CoreV1().Nodes().Get(ctx, e.nodeName, metav1.GetOptions{}); err != nil {
		testreq.Missing(t, fmt.Sprintf("cluster of %s does not answer: %v", e.kubeconfig, err))
	}
	e.imagesDir = t.TempDir()
	return e
}

// image is one built image: its reference and archive.
type image struct{ ref, archive string }

// buildImages builds the manager, agent and apps images with hack/images at tag and
// imports them into the node's containerd. It returns the references by image name.
func (e *env) buildImages(t *testing.T, tag string) map[string]string {
	t.Helper()
	start := time.Now()
	out := filepath.Join(e.imagesDir, tag)
	cmd := exec.Command("go", "run", "./hack/images", "-out", out, "-tag", tag)
	cmd.Dir = e.root
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/images -tag %s: %v", tag, err)
	}
	refs := map[string]string{}
	var archives []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := f[0][strings.LastIndex(f[0], "/")+1:]
		name = name[:strings.LastIndex(name, ":")]
		refs[name] = f[0]
		archives = append(archives, f[1])
	}
	imp := exec.Command("go", append([]string{"run", "./hack/cluster", "import"}, archives...)...)
	imp.Dir = e.root
	if b, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("importing images: %v\n%s", err, b)
	}
	t.Logf("images %v built and imported in %s", refs, time.Since(start).Round(time.Second))
	return refs
}

// helm runs the chart through Helm's Go SDK.
type helm struct {
	cfg       *action.Configuration
	chart     *chart.Chart
	namespace string
	release   string
}

func (e *env) helm(t *testing.T, namespace, release string) *helm {
	t.Helper()
	settings := cli.New()
	settings.KubeConfig = e.kubeconfig
	settings.SetNamespace(namespace)
	cfg := new(action.Configuration)
	if err := cfg.Init(settings.RESTClientGetter(), namespace, "secret", func(format string, v ...any) {
		t.Logf("helm: "+format, v...)
	}); err != nil {
		t.Fatalf("helm init: %v", err)
	}
	ch, err := loader.Load(filepath.Join(e.root, "charts", "hoststack"))
	if err != nil {
		t.Fatalf("loading charts/hoststack: %v", err)
	}
	return &helm{cfg: cfg, chart: ch, namespace: namespace, release: release}
}

func (h *helm) install(values map[string]any) error {
	in := action.NewInstall(h.cfg)
	in.ReleaseName, in.Namespace, in.CreateNamespace = h.release, h.namespace, true
	in.Wait, in.Timeout = true, 5*time.Minute
	_, err := in.Run(h.chart, values)
	return err
}

func (h *helm) upgrade(values map[string]any) error {
	up := action.NewUpgrade(h.cfg)
	up.Namespace = h.namespace
	up.Wait, up.Timeout = true, 5*time.Minute
	_, err := up.Run(h.release, h.chart, values)
	return err
}

func (h *helm) uninstall() error {
	un := action.NewUninstall(h.cfg)
	un.Wait, un.Timeout = true, 5*time.Minute
	_, err := un.Run(h.release)
	return err
}

// appResult is the JSON the e2e app's control API answers.
type appResult struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error"`
	Bytes  int    `json:"bytes"`
	SHA256 string `json:"sha256"`
	Local  string `json:"local"`
	Remote string `json:"remote"`
	Line   string `json:"line"`
	// How often the app's client.Options.OnEngine reported the engine lost and back.
	EngineLost int64 `json:"engineLost"`
	EngineBack int64 `json:"engineBack"`
}

// call asks the e2e app in the pod at podIP (its control port, reached from the node
// over the pod network) to do something.
func call(podIP, path string) (appResult, error) {
	c := &http.Client{Timeout: 3 * time.Minute}
	resp, err := c.Get("http://" + podIP + ":9000" + path)
	if err != nil {
		return appResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return appResult{}, fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	var r appResult
	if err := json.Unmarshal(b, &r); err != nil {
		return appResult{}, fmt.Errorf("%s: %w: %s", path, err, b)
	}
	return r, nil
}

// kubectl runs the cluster's kubectl with the admin kubeconfig.
func (e *env) kubectlRun(stdin string, args ...string) (string, error) {
	cmd := exec.Command(e.kubectl, append([]string{"--kubeconfig", e.kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// podLogs is the log of every container of the pods matching selector, for failures.
func (e *env) podLogs(ns, selector string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		for _, c := range p.Spec.Containers {
			raw, err := e.cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, TailLines: ptr(int64(40))}).DoRaw(ctx)
			fmt.Fprintf(&b, "--- %s/%s[%s] (%v):\n%s\n", p.Namespace, p.Name, c.Name, err, raw)
		}
	}
	return b.String()
}

func ptr[T any](v T) *T { return &v }

func intstrPort(p int) intstr.IntOrString { return intstr.FromInt32(int32(p)) }
