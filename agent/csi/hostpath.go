package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
)

// HostPathSockets is the fallback for clusters without CSI: it serves each
// pod's attach socket at <Dir>/<pod-namespace>/<pod-name>/session.sock, and
// the pod webhook mounts that one directory into the pod as a hostPath
// volume. The agent's pod cache drives it (AddPod, RemovePod or Sync) with the
// pods of its node that some AppNamespace selects. Safe for concurrent use.
type HostPathSockets struct {
	dir  string
	pods PodSockets
	log  *slog.Logger

	mu     sync.Mutex
	served map[string]PodRef // "namespace/name" → pod
}

// NewHostPathSockets returns a HostPathSockets serving under dir through
// pods.
func NewHostPathSockets(dir string, pods PodSockets, log *slog.Logger) (*HostPathSockets, error) {
	if dir == "" || !filepath.IsAbs(dir) || pods == nil {
		return nil, errors.New("csi: HostPathSockets needs an absolute directory and a PodSockets")
	}
	if log == nil {
		log = slog.Default()
	}
	return &HostPathSockets{dir: filepath.Clean(dir), pods: pods, log: log, served: map[string]PodRef{}}, nil
}

// Dir returns the directory of a pod's socket.
func (h *HostPathSockets) Dir(pod PodRef) string {
	return filepath.Join(h.dir, pod.Namespace, pod.Name)
}

// AddPod serves the pod's socket and returns its path. A pod that replaces
// one of the same namespace and name (another UID) takes its directory over.
func (h *HostPathSockets) AddPod(ctx context.Context, pod PodRef) (string, error) {
	if err := pod.validate(); err != nil {
		return "", err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	key := pod.Namespace + "/" + pod.Name
	dir := h.Dir(pod)
	if cur, ok := h.served[key]; ok && cur.UID != pod.UID {
		if err := h.pods.Unpublish(ctx, dir); err != nil {
			return "", fmt.Errorf("replacing pod %s: %w", cur, err)
		}
		delete(h.served, key)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("pod %s socket directory: %w", pod, err)
	}
	path, err := h.pods.Publish(ctx, pod, dir)
	if err != nil {
		if _, ok := h.served[key]; !ok {
			// leave no empty directories behind a refused pod
			_ = os.Remove(dir)
			_ = os.Remove(filepath.Dir(dir))
		}
		return "", err
	}
	h.served[key] = pod
	return path, nil
}

// RemovePod stops serving the pod's socket and removes its directory (and
// the namespace's, once empty). A pod that is not (or no longer) the one
// served under its name is ignored.
func (h *HostPathSockets) RemovePod(ctx context.Context, pod PodRef) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.removeLocked(ctx, pod)
}

func (h *HostPathSockets) removeLocked(ctx context.Context, pod PodRef) error {
	key := pod.Namespace + "/" + pod.Name
	cur, ok := h.served[key]
	if !ok || cur.UID != pod.UID {
		return nil
	}
	dir := h.Dir(pod)
	if err := h.pods.Unpublish(ctx, dir); err != nil {
		return fmt.Errorf("pod %s: %w", pod, err)
	}
	delete(h.served, key)
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pod %s socket directory: %w", pod, err)
	}
	_ = os.Remove(filepath.Dir(dir)) // the namespace's directory, if empty
	return nil
}

// Sync serves exactly pods: it adds the missing ones and removes the others.
// It goes on past a failing pod and returns every error joined.
func (h *HostPathSockets) Sync(ctx context.Context, pods []PodRef) error {
	want := map[string]bool{}
	var errs []error
	for _, p := range pods {
		if _, err := h.AddPod(ctx, p); err != nil {
			errs = append(errs, err)
			h.log.Warn("hostPath pod socket", "pod", p.String(), "err", err)
			if errors.Is(err, ErrNotSelected) {
				continue // no longer selected: its socket goes below
			}
		}
		want[p.Namespace+"/"+p.Name+"/"+p.UID] = true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.served {
		if !want[p.Namespace+"/"+p.Name+"/"+p.UID] {
			if err := h.removeLocked(ctx, p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Pods returns the pods served.
func (h *HostPathSockets) Pods() []PodRef {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]PodRef, 0, len(h.served))
	for _, p := range h.served {
		out = append(out, p)
	}
	return out
}
