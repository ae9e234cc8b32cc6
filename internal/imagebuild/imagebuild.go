// Package imagebuild builds hoststack's container images without a
// container engine: static Go binaries laid as files on a small base layer
// of our own (passwd and group with the nonroot user 65532, the host's CA
// certificates, /tmp), written as docker-archive tarballs that
// `ctr images import` and `docker load` accept. The top-level Dockerfile
// builds the same images with an engine.
//
// Images are reproducible: every file has mode, owner and time fixed, so the
// same binaries give the same digests.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// VersionVar is the variable -ldflags -X stamps the version into.
const VersionVar = "github.com/hoststack/hoststack/internal/version.Version"

// NonRoot is the user (and group) id of the unprivileged user of the base
// layer, as distroless's "nonroot".
const NonRoot = 65532

// File is one entry of a layer: a regular file (Data, or the host file Src)
// or, with Dir, a directory. Parent directories are added as root-owned 0755.
type File struct {
	Path     string // absolute path in the image
	Mode     int64  // permission bits; 0: 0755 for directories, 0644 for files
	UID, GID int
	Dir      bool
	Data     []byte
	Src      string // read when Data is nil and Dir is false
}

// Spec describes one image: files on top of the base layer and the
// container configuration.
type Spec struct {
	Files      []File
	Entrypoint []string
	Cmd        []string
	User       string // e.g. "65532:65532"; "" is root
	Env        []string
	WorkingDir string
	Labels     map[string]string
	// NoBase leaves out the base layer (an image of only Files).
	NoBase bool
	// Arch is the image's architecture; "" is runtime.GOARCH.
	Arch string
}

// epoch is the modification time of every entry: fixed for reproducible
// digests, and not the zero time, which some tar readers refuse.
var epoch = time.Unix(0, 0).UTC()

// BaseFiles are the files of the minimal base: root and nonroot (65532) in
// /etc/passwd and /etc/group, the host's CA bundle when it has one (for the
// rare outbound TLS call; the API server's CA comes from the service
// account), a world-writable /tmp and nonroot's home.
func BaseFiles() ([]File, error) {
	files := []File{
		{Path: "/etc/passwd", Data: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRoot, NonRoot))},
		{Path: "/etc/group", Data: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRoot))},
		// Go's resolver reads it to decide files-then-DNS.
		{Path: "/etc/nsswitch.conf", Data: []byte("hosts: files dns\n")},
		{Path: "/tmp", Dir: true, Mode: 0o1777},
		{Path: "/root", Dir: true, Mode: 0o700},
		{Path: "/home/nonroot", Dir: true, Mode: 0o700, UID: NonRoot, GID: NonRoot},
	}
	for _, ca := range []string{"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"} {
		b, err := os.ReadFile(ca)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("base layer: CA bundle: %w", err)
		}
		files = append(files, File{Path: "/etc/ssl/certs/ca-certificates.crt", Data: b})
		break
	}
	return files, nil
}

// Layer returns an uncompressed-tar layer holding files (and their parent
// directories), in path order.
func Layer(files []File) (v1.Layer, error) {
	entries := map[string]File{}
	for _, f := range files {
		p := path.Clean(f.Path)
		if !path.IsAbs(p) || p == "/" {
			return nil, fmt.Errorf("layer: path %q must be absolute and not /", f.Path)
		}
		f.Path = p
		if !f.Dir && f.Data == nil {
			if f.Src == "" {
				return nil, fmt.Errorf("layer: %s: neither Data nor Src", p)
			}
			b, err := os.ReadFile(f.Src)
			if err != nil {
				return nil, fmt.Errorf("layer: %s: %w", p, err)
			}
			f.Data = b
		}
		if old, ok := entries[p]; ok && !(old.Dir && f.Dir) {
			return nil, fmt.Errorf("layer: %s given twice", p)
		}
		entries[p] = f
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := entries[d]; ok {
				if !e.Dir {
					return nil, fmt.Errorf("layer: %s is a file and a parent directory", d)
				}
				continue
			}
			entries[d] = File{Path: d, Dir: true}
		}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := entries[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: f.Mode, Uid: f.UID, Gid: f.GID, ModTime: epoch, Format: tar.FormatPAX}
		if f.Dir {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
			if h.Mode == 0 {
				h.Mode = 0o755
			}
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.Data))
			if h.Mode == 0 {
				h.Mode = 0o644
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", p, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// Image builds the image s describes: the base layer (unless NoBase), then
// one layer of s.Files.
func Image(s Spec) (v1.Image, error) {
	var layers []v1.Layer
	if !s.NoBase {
		base, err := BaseFiles()
		if err != nil {
			return nil, err
		}
		l, err := Layer(base)
		if err != nil {
			return nil, fmt.Errorf("base layer: %w", err)
		}
		layers = append(layers, l)
	}
	if len(s.Files) > 0 {
		l, err := Layer(s.Files)
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = s.Arch
	if cf.Architecture == "" {
		cf.Architecture = runtime.GOARCH
	}
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Cmd = s.Cmd
	cf.Config.User = s.User
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, s.Env...)
	cf.Config.WorkingDir = s.WorkingDir
	cf.Config.Labels = s.Labels
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return img, nil
}

// WriteArchive writes images, keyed by reference ("registry/repo:tag"), to
// one docker-archive tarball at file: `ctr -n k8s.io images import file`
// (containerd 1.6 and later) or `docker load -i file` load them under those
// names.
func WriteArchive(file string, images map[string]v1.Image) error {
	refs := make(map[name.Reference]v1.Image, len(images))
	for r, img := range images {
		tag, err := name.NewTag(r, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("image reference %q: %w", r, err)
		}
		refs[tag] = img
	}
	tmp := file + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}

// GoBuild describes one static Go binary.
type GoBuild struct {
	Dir     string // directory go runs in (the module); "" is the current one
	Package string // e.g. ./cmd/hoststack-agent
	Output  string // binary path
	Version string // stamped into VersionVar; "" leaves "dev"
	Arch    string // GOARCH; "" is runtime.GOARCH
	Tags    []string
}

// BuildGo builds b as the Dockerfile does: CGO_ENABLED=0, -trimpath,
// stripped, version stamped.
func BuildGo(ctx context.Context, b GoBuild) error {
	ldflags := "-s -w"
	if b.Version != "" {
		ldflags += " -X " + VersionVar + "=" + b.Version
	}
	args := []string{"build", "-trimpath", "-ldflags", ldflags, "-o", b.Output}
	if len(b.Tags) > 0 {
		args = append(args, "-tags", strings.Join(b.Tags, ","))
	}
	args = append(args, b.Package)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = b.Dir
	arch := b.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", b.Package, err, out)
	}
	return nil
}

// Tag turns a version (git describe output) into a valid image tag:
// characters other than [A-Za-z0-9_.-] become '-', at most 128 characters.
func Tag(version string) string {
	t := []byte(version)
	for i, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			t[i] = '-'
		}
	}
	if len(t) > 128 {
		t = t[:128]
	}
	if len(t) == 0 || t[0] == '.' || t[0] == '-' {
		return "v" + string(t)
	}
	return string(t)
}
