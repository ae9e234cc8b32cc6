package cni

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func att(cid, ifname, uid string, added time.Time) Attachment {
	return Attachment{
		AttachmentKey: AttachmentKey{ContainerID: cid, IfName: ifname},
		Network:       "podnet",
		Pod:           PodRef{Namespace: "ns", Name: "p", UID: uid},
		Netns:         "/run/netns/" + cid,
		Added:         added,
	}
}

func mustPut(t *testing.T, r *Registry, a Attachment) {
	t.Helper()
	if err := r.Put(a); err != nil {
		t.Fatal(err)
	}
}

func TestLookupPrefersNewestSandboxAndEth0(t *testing.T) {
	r, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mustPut(t, r, att("old", "eth0", "u1", t0))
	mustPut(t, r, att("new", "net1", "u1", t0.Add(time.Minute)))
	mustPut(t, r, att("new", "eth0", "u1", t0.Add(30*time.Second)))
	mustPut(t, r, att("other", "eth0", "u2", t0.Add(time.Hour)))
	got, ok := r.Lookup("u1")
	if !ok || got.ContainerID != "new" || got.IfName != "eth0" {
		t.Fatalf("Lookup = %v %v, want new/eth0", got.AttachmentKey, ok)
	}
	var keys []string
	for _, a := range r.ForPod("u1") {
		keys = append(keys, a.String())
	}
	if strings.Join(keys, " ") != "new/eth0 new/net1 old/eth0" {
		t.Fatalf("ForPod order: %v", keys)
	}
	if _, ok := r.Lookup("nobody"); ok {
		t.Fatal("Lookup of an unknown UID succeeded")
	}
	if _, ok := r.Lookup(""); ok {
		t.Fatal("Lookup of the empty UID succeeded")
	}
}

func TestSubscribeReplaysThenFollowsInOrder(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	mustPut(t, r, att("a", "eth0", "u1", now))
	var got []string
	cancel := r.Subscribe(func(ev Event) {
		// A subscriber may read the registry from the callback.
		_, known := r.Get(ev.Attachment.AttachmentKey)
		got = append(got, ev.Kind.String()+" "+ev.Attachment.String()+" known="+map[bool]string{true: "y", false: "n"}[known])
	})
	mustPut(t, r, att("b", "eth0", "u2", now))
	mustPut(t, r, att("b", "eth0", "u2", now.Add(time.Second))) // replaced: removed then added
	if err := r.Delete(AttachmentKey{"a", "eth0"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(AttachmentKey{"a", "eth0"}, time.Time{}); err != nil { // unknown: no event
		t.Fatal(err)
	}
	mustPut(t, r, Attachment{AttachmentKey: AttachmentKey{"c", "eth0"}, Network: "othernet", Added: now})
	n, err := r.Retain("podnet", nil)
	if err != nil || n != 1 {
		t.Fatalf("Retain = %d, %v; want 1", n, err)
	}
	cancel()
	mustPut(t, r, att("d", "eth0", "u4", now))
	want := []string{
		"added a/eth0 known=y",
		"added b/eth0 known=y",
		"removed b/eth0 known=y",
		"added b/eth0 known=y",
		"removed a/eth0 known=n",
		"added c/eth0 known=y",
		"removed b/eth0 known=n",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Persisted: a reopened registry has exactly c and d.
	r2, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, a := range r2.List() {
		keys = append(keys, a.String())
	}
	if strings.Join(keys, " ") != "c/eth0 d/eth0" {
		t.Fatalf("reopened: %v", keys)
	}
}

func TestOpenRegistryRejectsBadState(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, stateFile), `{"version":7,"attachments":[]}`, 0o600)
	if _, err := OpenRegistry(dir); err == nil || !strings.Contains(err.Error(), "version 7") {
		t.Fatalf("OpenRegistry: %v", err)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startServer(t *testing.T, dir string, status func() error) (*Registry, *Server, *Client) {
	t.Helper()
	r, err := OpenRegistry(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "cni.sock")
	s := NewServer(r, ServerConfig{Socket: sock, PendingDir: filepath.Join(dir, "pending"), Status: status, Log: quietLog()})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return r, s, NewClient(sock, 5*time.Second)
}

func wantCode(t *testing.T, err error, code uint) {
	t.Helper()
	var eb *ErrorBody
	if !errors.As(err, &eb) || eb.Code != code {
		t.Fatalf("error %v, want CNI code %d", err, code)
	}
}

func TestServerProtocol(t *testing.T) {
	ctx := context.Background()
	notReady := errors.New("engine not started")
	var ready atomic.Bool
	ready.Store(true)
	r, s, c := startServer(t, t.TempDir(), func() error {
		if ready.Load() {
			return nil
		}
		return notReady
	})
	key := AttachmentKey{ContainerID: "c1", IfName: "eth0"}
	add := &Request{AttachmentKey: key, Network: "n", Netns: "/run/netns/x", Pod: PodRef{"ns", "p", "u1"},
		IPs: []IPConfig{{Address: "10.0.0.2/24"}}}
	if err := c.Do(ctx, PathAdd, add); err != nil {
		t.Fatal(err)
	}
	if a, ok := r.Lookup("u1"); !ok || a.Netns != "/run/netns/x" || a.IPs[0].Address != "10.0.0.2/24" {
		t.Fatalf("after ADD: %+v %v", a, ok)
	}
	if err := c.Do(ctx, PathCheck, &Request{AttachmentKey: key, Netns: "/run/netns/x"}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, c.Do(ctx, PathCheck, &Request{AttachmentKey: AttachmentKey{"c2", "eth0"}}), CodeUnknownContainer)
	wantCode(t, c.Do(ctx, PathCheck, &Request{AttachmentKey: key, Netns: "/run/netns/elsewhere"}), CodeInternal)
	wantCode(t, c.Do(ctx, PathAdd, &Request{AttachmentKey: key}), CodeDecodingFailure) // no netns
	wantCode(t, c.Do(ctx, PathDel, &Request{}), CodeDecodingFailure)                   // no key
	wantCode(t, c.Do(ctx, "/v2/add", add), CodeInternal)
	if err := c.Do(ctx, PathStatus, nil); err != nil {
		t.Fatal(err)
	}
	ready.Store(false)
	err := c.Do(ctx, PathStatus, nil)
	wantCode(t, err, CodePluginNotAvailable)
	if !strings.Contains(err.Error(), notReady.Error()) {
		t.Fatalf("STATUS error %v lacks the reason", err)
	}
	if err := c.Do(ctx, PathDel, &Request{AttachmentKey: key}); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Lookup("u1"); ok {
		t.Fatal("known after DEL")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, PathStatus, nil); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("after Close: %v, want ErrUnreachable", err)
	}
}

func TestQueuedDelKeepsNewerAdd(t *testing.T) {
	dir := t.TempDir()
	pending := filepath.Join(dir, "pending")
	if err := os.MkdirAll(pending, 0o700); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRegistry(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	mustPut(t, r, att("gone", "eth0", "u1", now.Add(-time.Hour)))
	mustPut(t, r, att("readded", "eth0", "u2", now))
	queue := func(k AttachmentKey, at time.Time) {
		b, _ := json.Marshal(Request{AttachmentKey: k, QueuedAt: at})
		writeFile(t, filepath.Join(pending, PendingFileName(k)), string(b), 0o600)
	}
	queue(AttachmentKey{"gone", "eth0"}, now.Add(-time.Minute))
	queue(AttachmentKey{"readded", "eth0"}, now.Add(-time.Minute)) // queued before the ADD
	writeFile(t, filepath.Join(pending, "junk.json"), "not json", 0o600)
	writeFile(t, filepath.Join(pending, ".queue-123"), "half", 0o600) // a write in progress

	s := NewServer(r, ServerConfig{Socket: filepath.Join(dir, "cni.sock"), PendingDir: pending, Log: quietLog()})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if _, ok := r.Lookup("u1"); ok {
		t.Fatal("queued DEL not applied")
	}
	if _, ok := r.Lookup("u2"); !ok {
		t.Fatal("queued DEL removed an attachment added after it")
	}
	if got := dirNames(t, pending); !reflect.DeepEqual(got, []string{".queue-123"}) {
		t.Fatalf("pending dir after start: %v", got)
	}
}

func TestStartRefusesNonSocket(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "cni.sock")
	writeFile(t, path, "precious", 0o600)
	s := NewServer(r, ServerConfig{Socket: path, PendingDir: filepath.Join(dir, "p"), Log: quietLog()})
	if err := s.Start(); err == nil {
		_ = s.Close()
		t.Fatal("Start replaced a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatal("file changed")
	}
}

// Concurrent ADDs and DELs through the socket: every event reaches the
// subscriber, in an order that replays to the registry's final state.
func TestConcurrentCalls(t *testing.T) {
	r, _, c := startServer(t, t.TempDir(), nil)
	replay := map[AttachmentKey]bool{}
	cancel := r.Subscribe(func(ev Event) { replay[ev.Attachment.AttachmentKey] = ev.Kind == Added })
	defer cancel()
	const n = 16
	errs := make(chan error, n)
	for i := range n {
		go func() {
			ctx := context.Background()
			k := AttachmentKey{ContainerID: "c" + string(rune('a'+i)), IfName: "eth0"}
			err := c.Do(ctx, PathAdd, &Request{AttachmentKey: k, Netns: "/run/netns/x", Pod: PodRef{UID: "u"}})
			if err == nil && i%2 == 0 {
				err = c.Do(ctx, PathDel, &Request{AttachmentKey: k})
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	var live []string
	for k, on := range replay {
		if on {
			live = append(live, k.String())
		}
	}
	var known []string
	for _, a := range r.List() {
		known = append(known, a.String())
	}
	slices.Sort(live)
	if len(known) != n/2 || !reflect.DeepEqual(live, known) {
		t.Fatalf("events say %v, registry says %v", live, known)
	}
}

func TestPodOfIPFollowsTheNewestHolder(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	withIP := func(a Attachment, cidrs ...string) Attachment {
		for _, c := range cidrs {
			a.IPs = append(a.IPs, IPConfig{Address: c})
		}
		return a
	}
	mustPut(t, r, withIP(att("old", "eth0", "u1", t0), "10.1.0.5/24"))
	mustPut(t, r, withIP(att("new", "eth0", "u2", t0.Add(time.Minute)), "10.1.0.5/24", "fd00::5/64"))
	mustPut(t, r, withIP(att("bad", "eth0", "u3", t0), "not-an-ip"))
	for ip, want := range map[string]string{"10.1.0.5": "u2", "::ffff:10.1.0.5": "u2", "fd00::5": "u2", "10.1.0.6": ""} {
		got, ok := r.PodOfIP(netip.MustParseAddr(ip))
		if got != want || ok != (want != "") {
			t.Errorf("PodOfIP(%s) = %q %v, want %q", ip, got, ok, want)
		}
	}
	// the index survives a restart and follows deletes
	r2, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Delete(AttachmentKey{ContainerID: "new", IfName: "eth0"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got, ok := r2.PodOfIP(netip.MustParseAddr("10.1.0.5")); !ok || got != "u1" {
		t.Fatalf("after deleting the newer holder: %q %v, want u1", got, ok)
	}
	if _, ok := r2.PodOfIP(netip.MustParseAddr("fd00::5")); ok {
		t.Fatal("a deleted attachment's address still resolves")
	}
}
