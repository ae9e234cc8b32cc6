package cni

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/onsi/gomega"
)

// runKeeper runs a Keeper on the directories until the test ends and
// returns its latest state.
func runKeeper(t *testing.T, bin, binDir, confDir string) (state func() (ChainState, int)) {
	t.Helper()
	var mu sync.Mutex
	var last ChainState
	n := 0
	k := &Keeper{Binary: bin, BinDir: binDir, ConfDir: confDir, Resync: time.Hour, Settle: 20 * time.Millisecond,
		OnChange: func(st ChainState) {
			mu.Lock()
			last, n = st, n+1
			mu.Unlock()
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Keeper.Run: %v", err)
		}
	})
	return func() (ChainState, int) {
		mu.Lock()
		defer mu.Unlock()
		return last, n
	}
}

// writeAsInstaller replaces path the way CNI installers do: a temporary
// file, then a rename.
func writeAsInstaller(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".calico-tmp")
	writeFile(t, tmp, data, 0o644)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// chainedInto reports whether path has our entry once, last.
func chainedInto(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var l struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	return json.Unmarshal(data, &l) == nil && countOurs(l.Plugins) == 1 && isOurs(l.Plugins[len(l.Plugins)-1])
}

// The node has no CNI configuration when the agent starts (the primary CNI
// is itself a DaemonSet that comes up later): the keeper reports NoConfig,
// does not give up, and chains as soon as the conflist appears. The
// primary CNI rewriting its conflist without our entry (Calico and Cilium
// do at every restart) gets the entry back; so does a deleted binary.
func TestKeeperFollowsThePrimaryCNI(t *testing.T) {
	g := gomega.NewWithT(t)
	bin, binDir, _ := installDirs(t)
	confDir := filepath.Join(t.TempDir(), "etc", "cni", "net.d") // not even there yet
	state := runKeeper(t, bin, binDir, confDir)
	g.Eventually(func() string { st, _ := state(); return st.Reason }).WithTimeout(10 * time.Second).Should(gomega.Equal(ReasonNoConfig))

	calico := `{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico","ipam":{"type":"calico-ipam"}},{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`
	primary := filepath.Join(confDir, "10-calico.conflist")
	writeAsInstaller(t, primary, calico)
	g.Eventually(func() ChainState { st, _ := state(); return st }).WithTimeout(10 * time.Second).Should(gomega.Equal(
		ChainState{Chained: true, Reason: ReasonChained, Message: "chained into " + primary, File: primary}))
	g.Expect(chainedInto(primary)).To(gomega.BeTrue())
	g.Expect(filepath.Join(binDir, PluginType)).To(gomega.BeARegularFile())

	// Calico's installer restarts and writes its conflist again.
	writeAsInstaller(t, primary, calico)
	g.Eventually(func() bool { return chainedInto(primary) }).WithTimeout(10 * time.Second).Should(gomega.BeTrue())
	st, _ := state()
	g.Expect(st.Chained).To(gomega.BeTrue())

	g.Expect(os.Remove(filepath.Join(binDir, PluginType))).To(gomega.Succeed())
	g.Eventually(func() error { _, err := os.Stat(filepath.Join(binDir, PluginType)); return err }).WithTimeout(10 * time.Second).Should(gomega.Succeed())

	// The CNI turns into something we cannot chain: the state says why.
	writeAsInstaller(t, primary, `{"name":"k8s-pod-network","cniVersion":"0.2.0","plugins":[{"type":"calico"}]}`)
	g.Eventually(func() string { st, _ := state(); return st.Reason }).WithTimeout(10 * time.Second).Should(gomega.Equal(ReasonUnsupportedVersion))
}
