package apply

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/hoststack/hoststack/engine/session"
)

func TestApplyIsADiff(t *testing.T) {
	eng, err := session.New(session.Config{Logf: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	dir := t.TempDir()
	ap := New(eng, func(c session.NamespaceConfig) string { return filepath.Join(dir, c.Namespace, c.Name, "session.sock") })
	a := session.NamespaceConfig{Namespace: "t", Name: "a"}
	b := session.NamespaceConfig{Namespace: "t", Name: "b"}

	changes, err := ap.Apply([]session.NamespaceConfig{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Change{{"add", "t/a"}, {"add", "t/b"}}; !reflect.DeepEqual(changes, want) {
		t.Errorf("first apply = %v, want %v", changes, want)
	}
	for _, k := range []string{"t/a", "t/b"} {
		if _, err := os.Stat(ap.SocketOf(k)); err != nil {
			t.Errorf("socket of %s: %v", k, err)
		}
	}

	// Same input: nothing to do.
	if changes, err := ap.Apply([]session.NamespaceConfig{a, b}); err != nil || len(changes) != 0 {
		t.Errorf("re-apply = %v, %v; want no changes", changes, err)
	}

	a2 := a
	a2.MaxApps = 3
	bSock := ap.SocketOf("t/b")
	changes, err = ap.Apply([]session.NamespaceConfig{a2})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Change{{"update", "t/a"}, {"remove", "t/b"}}; !reflect.DeepEqual(changes, want) {
		t.Errorf("second apply = %v, want %v", changes, want)
	}
	if _, err := os.Stat(bSock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removed namespace's socket still there: %v", err)
	}
	if got := eng.Namespaces(); !reflect.DeepEqual(got, []string{"t/a"}) {
		t.Errorf("engine serves %v, want [t/a]", got)
	}

	// One bad namespace does not block the others, and is reported.
	bad := session.NamespaceConfig{Namespace: "t", Name: "bad", RxFifoSize: 1000}
	changes, err = ap.Apply([]session.NamespaceConfig{a2, bad, b})
	if err == nil {
		t.Error("want an error for the invalid namespace")
	}
	if want := []Change{{"add", "t/b"}}; !reflect.DeepEqual(changes, want) {
		t.Errorf("apply with a bad namespace = %v, want %v", changes, want)
	}
}
