// Package serviceaccount lets envtests act as the service accounts of
// config/: it installs their RBAC and admission policies from the
// kustomize directories and impersonates them. envtest has no token
// signer; an impersonated identity carries the same user name, groups and
// node-name extra as a bound service-account token, which is all that RBAC
// and the policies look at.
package serviceaccount

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// The service accounts of config/.
const (
	Manager = "system:serviceaccount:hoststack-system:hoststack-manager"
	Agent   = "system:serviceaccount:hoststack-node:hoststack-agent"
	// NodeNameExtra is the user extra of a bound token of a pod: the node
	// the pod runs on.
	NodeNameExtra = "authentication.kubernetes.io/node-name"
)

// Groups are the groups of the service account sa.
func Groups(sa string) []string {
	parts := strings.Split(sa, ":")
	ns := ""
	if len(parts) == 4 {
		ns = parts[2]
	}
	return []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
}

// Impersonate returns admin acting as the service account sa, with a
// token bound to node when node is not "".
func Impersonate(admin *rest.Config, sa, node string) *rest.Config {
	c := rest.CopyConfig(admin)
	c.Impersonate = rest.ImpersonationConfig{UserName: sa, Groups: Groups(sa)}
	if node != "" {
		c.Impersonate.Extra = map[string][]string{NodeNameExtra: {node}}
	}
	return c
}

// Install creates the namespaces hoststack-system and hoststack-node and
// every object the kustomization.yaml of each of dirs lists, but the files
// named in skip, as c (an admin); objects that exist are left alone.
func Install(ctx context.Context, c client.Client, dirs []string, skip ...string) error {
	for _, ns := range []string{"hoststack-system", "hoststack-node"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	skipped := map[string]bool{}
	for _, f := range skip {
		skipped[f] = true
	}
	for _, dir := range dirs {
		k, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			return err
		}
		var kust struct {
			Resources []string `json:"resources"`
		}
		if err := yaml.Unmarshal(k, &kust); err != nil {
			return fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
		}
		for _, f := range kust.Resources {
			if skipped[f] {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return err
			}
			for _, doc := range strings.Split(string(b), "\n---") {
				u := &unstructured.Unstructured{}
				if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
					return fmt.Errorf("%s/%s: %w", dir, f, err)
				}
				if len(u.Object) == 0 {
					continue
				}
				if err := c.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
					return fmt.Errorf("%s/%s: %s %s: %w", dir, f, u.GetKind(), u.GetName(), err)
				}
			}
		}
	}
	return nil
}
