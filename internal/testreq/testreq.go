// Package testreq decides what a test does when a prerequisite it needs (root,
// network namespaces, the envtest API server assets) is missing: skip on a
// developer machine, fail in CI. CI exports HOSTSTACK_REQUIRE_PRIVILEGED=1 so a
// missing prerequisite can never turn a suite green by skipping it.
package testreq

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// EnvRequire is the variable CI sets to turn skips into failures.
const EnvRequire = "HOSTSTACK_REQUIRE_PRIVILEGED"

// Required reports whether missing prerequisites must fail tests.
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Missing skips t, or fails it when prerequisites are required, with why.
func Missing(t testing.TB, why string) {
	t.Helper()
	if Required() {
		t.Fatalf("prerequisite missing and %s=1: %s", EnvRequire, why)
	}
	t.Skipf("prerequisite missing (set %s=1 to fail instead): %s", EnvRequire, why)
}

// Root requires effective uid 0.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "test needs root")
	}
}

// NetNS requires root and the ip(8) command from iproute2 to create network
// namespaces and veth pairs.
func NetNS(t testing.TB) {
	t.Helper()
	Root(t)
	if _, err := exec.LookPath("ip"); err != nil {
		Missing(t, "test needs ip(8) from iproute2 for network namespaces")
	}
}

// Assets returns $KUBEBUILDER_ASSETS (the directory holding etcd,
// kube-apiserver and kubectl built by hack/envtest-assets.sh), or skips/fails.
func Assets(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		Missing(t, "KUBEBUILDER_ASSETS is not set; run `make test` or `export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh | tail -1)`")
		return ""
	}
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(dir + "/" + bin); err != nil {
			Missing(t, "KUBEBUILDER_ASSETS="+dir+" lacks "+bin)
			return ""
		}
	}
	return dir
}

// AssetsForMain is Assets for TestMain, which has no testing.TB. It returns
// the assets directory; or "" and why the API server cannot run (envtest
// tests then skip with that reason); or, when prerequisites are required, an
// error on which TestMain must exit non-zero.
func AssetsForMain() (dir, missing string, err error) {
	dir = os.Getenv("KUBEBUILDER_ASSETS")
	switch {
	case dir == "":
		missing = "KUBEBUILDER_ASSETS is not set; run `make test`"
	default:
		for _, bin := range []string{"etcd", "kube-apiserver"} {
			if _, statErr := os.Stat(dir + "/" + bin); statErr != nil {
				missing = "KUBEBUILDER_ASSETS=" + dir + " lacks " + bin
				break
			}
		}
	}
	if missing == "" {
		return dir, "", nil
	}
	if Required() {
		return "", missing, fmt.Errorf("envtest assets missing and %s=1: %s", EnvRequire, missing)
	}
	return "", missing, nil
}
