package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Attachment is what the agent knows about one CNI attachment of a pod.
type Attachment struct {
	AttachmentKey
	Network    string      `json:"network,omitempty"`
	Pod        PodRef      `json:"pod"`
	Netns      string      `json:"netns"`
	Interfaces []Interface `json:"interfaces,omitempty"`
	IPs        []IPConfig  `json:"ips,omitempty"`
	Added      time.Time   `json:"added"`
}

// EventKind says what happened to an attachment.
type EventKind int

const (
	// Added: a new attachment, or one replayed to a new subscriber.
	Added EventKind = iota + 1
	// Removed: DEL, GC or a queued DEL removed it.
	Removed
)

func (k EventKind) String() string {
	switch k {
	case Added:
		return "added"
	case Removed:
		return "removed"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one change of the registry.
type Event struct {
	Kind       EventKind
	Attachment Attachment
}

const stateFile = "attachments.json"
const stateVersion = 1

type stateDoc struct {
	Version     int          `json:"version"`
	Attachments []Attachment `json:"attachments"`
}

// Registry holds the attachments, persists them in a state directory and
// tells subscribers about changes. Methods are safe for concurrent use.
type Registry struct {
	dir string

	// wmu serialises mutations: change, persist, notify, so subscribers
	// see events in the order of the changes.
	wmu  sync.Mutex
	subs map[int]func(Event)
	next int

	mu   sync.RWMutex // guards all and byIP
	all  map[AttachmentKey]Attachment
	byIP map[netip.Addr]Attachment // newest attachment holding each IP
}

// indexIPs maps each pod IP to the newest attachment that holds it (a stale
// sandbox whose DEL is queued may still claim an address).
func indexIPs(all map[AttachmentKey]Attachment) map[netip.Addr]Attachment {
	m := make(map[netip.Addr]Attachment, len(all))
	for _, a := range all {
		for _, ipc := range a.IPs {
			p, err := netip.ParsePrefix(ipc.Address)
			if err != nil {
				continue
			}
			ip := p.Addr().Unmap()
			if old, ok := m[ip]; ok && old.Added.After(a.Added) {
				continue
			}
			m[ip] = a
		}
	}
	return m
}

// PodOfIP returns the UID of the pod holding ip (its newest attachment).
func (r *Registry) PodOfIP(ip netip.Addr) (podUID string, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.byIP[ip.Unmap()]
	if !ok || a.Pod.UID == "" {
		return "", false
	}
	return a.Pod.UID, true
}

// OpenRegistry loads the registry persisted in dir (created if missing).
func OpenRegistry(dir string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cni state dir: %w", err)
	}
	r := &Registry{dir: dir, subs: map[int]func(Event){}, all: map[AttachmentKey]Attachment{}}
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		r.byIP = map[netip.Addr]Attachment{}
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cni state: %w", err)
	}
	var doc stateDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("cni state %s: %w", filepath.Join(dir, stateFile), err)
	}
	if doc.Version != stateVersion {
		return nil, fmt.Errorf("cni state %s: version %d, want %d", filepath.Join(dir, stateFile), doc.Version, stateVersion)
	}
	for _, a := range doc.Attachments {
		r.all[a.AttachmentKey] = a
	}
	r.byIP = indexIPs(r.all)
	return r, nil
}

// Lookup returns the attachment of the pod with this UID. A pod with several
// attachments (several networks, or a stale sandbox whose DEL is still
// queued) yields the newest sandbox's attachment, preferring eth0 and then
// the lowest interface name.
func (r *Registry) Lookup(podUID string) (Attachment, bool) {
	as := r.ForPod(podUID)
	if len(as) == 0 {
		return Attachment{}, false
	}
	return as[0], true
}

// ForPod returns every attachment of the pod with this UID, in Lookup's
// order of preference.
func (r *Registry) ForPod(podUID string) []Attachment {
	if podUID == "" {
		return nil
	}
	r.mu.RLock()
	var as []Attachment
	for _, a := range r.all {
		if a.Pod.UID == podUID {
			as = append(as, a)
		}
	}
	r.mu.RUnlock()
	// A sandbox's age is that of its newest attachment.
	newest := map[string]time.Time{}
	for _, a := range as {
		if a.Added.After(newest[a.ContainerID]) {
			newest[a.ContainerID] = a.Added
		}
	}
	slices.SortFunc(as, func(a, b Attachment) int {
		if a.ContainerID != b.ContainerID {
			if c := newest[b.ContainerID].Compare(newest[a.ContainerID]); c != 0 {
				return c
			}
			return strings.Compare(a.ContainerID, b.ContainerID)
		}
		if (a.IfName == "eth0") != (b.IfName == "eth0") {
			if a.IfName == "eth0" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.String(), b.String())
	})
	return as
}

// List returns every attachment, sorted by key.
func (r *Registry) List() []Attachment {
	r.mu.RLock()
	as := make([]Attachment, 0, len(r.all))
	for _, a := range r.all {
		as = append(as, a)
	}
	r.mu.RUnlock()
	slices.SortFunc(as, func(a, b Attachment) int { return strings.Compare(a.String(), b.String()) })
	return as
}

// Subscribe calls fn for every change from now on, after it has been
// persisted, in order; the attachments already known are first replayed as
// Added events. fn runs on the goroutine making the change and must not
// block for long nor call Subscribe or cancel; it may call Lookup, ForPod
// and List. cancel stops the calls (once it returns, fn is not running).
func (r *Registry) Subscribe(fn func(Event)) (cancel func()) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	id := r.next
	r.next++
	r.subs[id] = fn
	for _, a := range r.List() {
		fn(Event{Kind: Added, Attachment: a})
	}
	return func() {
		r.wmu.Lock()
		delete(r.subs, id)
		r.wmu.Unlock()
	}
}

// Get returns the attachment with this key.
func (r *Registry) Get(k AttachmentKey) (Attachment, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.all[k]
	return a, ok
}

// Put records a (replacing any attachment with its key).
func (r *Registry) Put(a Attachment) error {
	return r.mutate(func(all map[AttachmentKey]Attachment) []Event {
		var evs []Event
		if old, ok := all[a.AttachmentKey]; ok {
			evs = append(evs, Event{Kind: Removed, Attachment: old})
		}
		all[a.AttachmentKey] = a
		return append(evs, Event{Kind: Added, Attachment: a})
	})
}

// putUnlessNewer records a unless an attachment with its key added after
// it is known (a queued ADD overtaken by a live one).
func (r *Registry) putUnlessNewer(a Attachment) error {
	return r.mutate(func(all map[AttachmentKey]Attachment) []Event {
		var evs []Event
		if old, ok := all[a.AttachmentKey]; ok {
			if old.Added.After(a.Added) {
				return nil
			}
			evs = append(evs, Event{Kind: Removed, Attachment: old})
		}
		all[a.AttachmentKey] = a
		return append(evs, Event{Kind: Added, Attachment: a})
	})
}

// Delete removes the attachment with key k, if it was added before
// notAfter (zero: whatever its age). Removing an unknown key is no error.
func (r *Registry) Delete(k AttachmentKey, notAfter time.Time) error {
	return r.mutate(func(all map[AttachmentKey]Attachment) []Event {
		old, ok := all[k]
		if !ok || (!notAfter.IsZero() && old.Added.After(notAfter)) {
			return nil
		}
		delete(all, k)
		return []Event{{Kind: Removed, Attachment: old}}
	})
}

// Retain removes every attachment of network that is not in valid and
// says how many it removed.
func (r *Registry) Retain(network string, valid []AttachmentKey) (int, error) {
	keep := make(map[AttachmentKey]bool, len(valid))
	for _, k := range valid {
		keep[k] = true
	}
	removed := 0
	err := r.mutate(func(all map[AttachmentKey]Attachment) []Event {
		var evs []Event
		for k, a := range all {
			if a.Network == network && !keep[k] {
				delete(all, k)
				evs = append(evs, Event{Kind: Removed, Attachment: a})
			}
		}
		slices.SortFunc(evs, func(a, b Event) int { return strings.Compare(a.Attachment.String(), b.Attachment.String()) })
		removed = len(evs)
		return evs
	})
	if err != nil {
		return 0, err
	}
	return removed, nil
}

// mutate applies change to a copy of the state, persists the copy, and only
// then makes it current and notifies: a failed write changes nothing.
func (r *Registry) mutate(change func(map[AttachmentKey]Attachment) []Event) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	next := make(map[AttachmentKey]Attachment, len(r.all)+1)
	for k, a := range r.all {
		next[k] = a
	}
	r.mu.RUnlock()
	evs := change(next)
	if len(evs) == 0 {
		return nil
	}
	doc := stateDoc{Version: stateVersion, Attachments: make([]Attachment, 0, len(next))}
	for _, a := range next {
		doc.Attachments = append(doc.Attachments, a)
	}
	slices.SortFunc(doc.Attachments, func(a, b Attachment) int { return strings.Compare(a.String(), b.String()) })
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("encode cni state: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(r.dir, stateFile), append(data, '\n'), 0o600, nil); err != nil {
		return fmt.Errorf("persist cni state: %w", err)
	}
	byIP := indexIPs(next)
	r.mu.Lock()
	r.all, r.byIP = next, byIP
	r.mu.Unlock()
	for _, ev := range evs {
		for _, id := range slices.Sorted(maps.Keys(r.subs)) {
			r.subs[id](ev)
		}
	}
	return nil
}
