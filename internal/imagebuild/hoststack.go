package imagebuild

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Paths of the binaries in hoststack's images; the chart and config/ name
// them (the agent's --cni-binary is AgentCNIPath).
const (
	ManagerPath  = "/usr/local/bin/hoststack-manager"
	AgentPath    = "/usr/local/bin/hoststack-agent"
	AgentCNIPath = "/opt/hoststack/bin/hoststack-cni"
	AppsDir      = "/usr/local/bin"
)

// Image names (the repository's last element).
const (
	ManagerImage = "hoststack-manager"
	AgentImage   = "hoststack-agent"
	AppsImage    = "hoststack-apps"
)

// DefaultRegistry is where the chart looks for the images by default.
const DefaultRegistry = "ghcr.io/hoststack"

// Options selects what Build builds.
type Options struct {
	Root     string   // module root; "" is the current directory
	Out      string   // directory for the archives (created)
	Registry string   // e.g. ghcr.io/hoststack; "" is DefaultRegistry
	Tag      string   // image tag; "" is Tag(Version)
	Version  string   // stamped into every binary; "" is "dev"
	Images   []string // of ManagerImage, AgentImage, AppsImage; nil is all
	// Apps are main packages (patterns as go list takes them) for the apps
	// image; nil is the echo example's server and client.
	Apps []string
	Arch string // "" is runtime.GOARCH
}

// Result is one built image.
type Result struct {
	Ref     string // registry/name:tag
	Archive string // docker-archive tarball holding it
	Digest  string // manifest digest
}

// Build compiles the binaries and writes one archive per image:
// <Out>/<image>.tar.
//
//   - hoststack-manager: the manager, run as nonroot (65532).
//   - hoststack-agent: the agent (root: it runs privileged) and
//     hoststack-cni at AgentCNIPath, which the agent copies to the node.
//   - hoststack-apps: the Apps binaries in AppsDir, named after their
//     package path below examples/ or test/e2e/apps/ ("echo-server").
func Build(ctx context.Context, o Options) ([]Result, error) {
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Tag == "" {
		o.Tag = Tag(o.Version)
	}
	if o.Registry == "" {
		o.Registry = DefaultRegistry
	}
	if o.Images == nil {
		o.Images = []string{ManagerImage, AgentImage, AppsImage}
	}
	if o.Apps == nil {
		o.Apps = []string{"./examples/echo/server", "./examples/echo/client"}
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	bin, err := os.MkdirTemp("", "hoststack-images")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bin)
	gobin := func(pkg, out string) (string, error) {
		p := filepath.Join(bin, out)
		return p, BuildGo(ctx, GoBuild{Dir: o.Root, Package: pkg, Output: p, Version: o.Version, Arch: o.Arch})
	}
	labels := map[string]string{
		"org.opencontainers.image.version": o.Version,
		"org.opencontainers.image.source":  "https://github.com/hoststack/hoststack",
	}
	var results []Result
	for _, name := range o.Images {
		var spec Spec
		switch name {
		case ManagerImage:
			m, err := gobin("./cmd/hoststack-manager", "manager")
			if err != nil {
				return nil, err
			}
			spec = Spec{Files: []File{{Path: ManagerPath, Mode: 0o755, Src: m}},
				Entrypoint: []string{ManagerPath}, User: fmt.Sprintf("%d:%d", NonRoot, NonRoot)}
		case AgentImage:
			a, err := gobin("./cmd/hoststack-agent", "agent")
			if err != nil {
				return nil, err
			}
			c, err := gobin("./cmd/hoststack-cni", "cni")
			if err != nil {
				return nil, err
			}
			spec = Spec{Files: []File{{Path: AgentPath, Mode: 0o755, Src: a}, {Path: AgentCNIPath, Mode: 0o755, Src: c}},
				Entrypoint: []string{AgentPath}, User: "0:0"}
		case AppsImage:
			pkgs, err := mainPackages(ctx, o.Root, o.Apps)
			if err != nil {
				return nil, err
			}
			for _, p := range pkgs {
				n := appName(p)
				f, err := gobin(p, "app-"+n)
				if err != nil {
					return nil, err
				}
				spec.Files = append(spec.Files, File{Path: path.Join(AppsDir, n), Mode: 0o755, Src: f})
			}
			spec.User = fmt.Sprintf("%d:%d", NonRoot, NonRoot)
		default:
			return nil, fmt.Errorf("unknown image %q (want %s, %s or %s)", name, ManagerImage, AgentImage, AppsImage)
		}
		spec.Labels = labels
		spec.Arch = o.Arch
		img, err := Image(spec)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		ref := o.Registry + "/" + name + ":" + o.Tag
		archive := filepath.Join(o.Out, name+".tar")
		if err := WriteArchive(archive, map[string]v1.Image{ref: img}); err != nil {
			return nil, err
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		results = append(results, Result{Ref: ref, Archive: archive, Digest: d.String()})
	}
	return results, nil
}

// mainPackages expands patterns to the import paths of main packages.
func mainPackages(ctx context.Context, root string, patterns []string) ([]string, error) {
	var pkgs []string
	for _, p := range patterns {
		out, err := goList(ctx, root, p)
		if err != nil {
			return nil, err
		}
		pkgs = append(pkgs, out...)
	}
	sort.Strings(pkgs)
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("apps: no main package in %v", patterns)
	}
	return pkgs, nil
}

// appName names a binary after its package below examples/ or
// test/e2e/apps/: .../examples/echo/server is echo-server.
func appName(importPath string) string {
	for _, prefix := range []string{"/test/e2e/apps/", "/examples/"} {
		if i := strings.Index(importPath, prefix); i >= 0 {
			return strings.ReplaceAll(importPath[i+len(prefix):], "/", "-")
		}
	}
	return path.Base(importPath)
}

// goList returns the main packages pattern matches.
func goList(ctx context.Context, root, pattern string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-f", "{{if eq .Name \"main\"}}{{.ImportPath}}{{end}}", pattern)
	cmd.Dir = root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %w\n%s", pattern, err, stderr.String())
	}
	var pkgs []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			pkgs = append(pkgs, l)
		}
	}
	return pkgs, nil
}
