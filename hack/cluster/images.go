package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ensurePauseImage builds the pause binary and its one-layer image and imports it,
// unless containerd already has it.
func ensurePauseImage(ctx context.Context, l layout) error {
	if has, err := hasImage(ctx, l, pauseImage); err != nil {
		return err
	} else if has {
		return nil
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	bin := l.path("images", "pause")
	build := exec.CommandContext(ctx, goCmd(), "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./hack/cluster/pause")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the pause binary: %w: %s", err, out)
	}
	archive := l.path("images", "pause.tar")
	if err := writePauseArchive(bin, archive); err != nil {
		return err
	}
	return importImages(ctx, l, []string{archive})
}

// writePauseArchive writes a docker-save archive of one layer holding /pause.
func writePauseArchive(bin, archive string) error {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(exe)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(exe); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return fmt.Errorf("pause layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", goArch()
	cfg.Config.Entrypoint = []string{"/pause"}
	cfg.Config.User = "65535:65535"
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(pauseImage)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(archive), 0o755); err != nil {
		return err
	}
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		return fmt.Errorf("writing %s: %w", archive, err)
	}
	return nil
}

// importImages loads image archives into the k8s.io namespace of the node's
// containerd, where the kubelet's CRI finds them.
func importImages(ctx context.Context, l layout, archives []string) error {
	if len(archives) == 0 {
		return errors.New("import: name at least one image archive")
	}
	for _, a := range archives {
		out, err := exec.CommandContext(ctx, "ctr", "--address", l.containerdSock(), "-n", "k8s.io",
			"images", "import", "--all-platforms", a).CombinedOutput()
		if err != nil {
			return fmt.Errorf("importing %s: %w: %s", a, err, strings.TrimSpace(string(out)))
		}
		logf("imported %s: %s", a, strings.TrimSpace(string(out)))
	}
	return nil
}

func hasImage(ctx context.Context, l layout, ref string) (bool, error) {
	out, err := exec.CommandContext(ctx, "ctr", "--address", l.containerdSock(), "-n", "k8s.io",
		"images", "ls", "-q").CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("listing images: %w: %s", err, strings.TrimSpace(string(out)))
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == ref {
			return true, nil
		}
	}
	return false, nil
}

// repoRoot is the directory of the go.mod above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if exists(filepath.Join(dir, "go.mod")) && exists(filepath.Join(dir, "hack", "envtest-assets.sh")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the hoststack repository (no go.mod with hack/envtest-assets.sh above the working directory)")
		}
		dir = parent
	}
}

func goCmd() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}
