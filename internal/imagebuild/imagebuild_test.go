package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hoststack/hoststack/internal/testreq"
)

// entries reads the flattened files of a layer: path -> header and content.
func entries(t *testing.T, l v1.Layer) map[string]struct {
	h    *tar.Header
	data []byte
} {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]struct {
		h    *tar.Header
		data []byte
	}{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = struct {
			h    *tar.Header
			data []byte
		}{h, b}
	}
}

// An image written to an archive reads back under its name with the
// configuration and files given, on the base layer, and building it again
// gives the same digest.
func TestImageArchiveRoundTrip(t *testing.T) {
	spec := Spec{
		Files:      []File{{Path: "/usr/local/bin/tool", Mode: 0o755, Data: []byte("#!binary")}},
		Entrypoint: []string{"/usr/local/bin/tool"},
		User:       "65532:65532",
		Labels:     map[string]string{"k": "v"},
	}
	img, err := Image(spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Image(spec)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("not reproducible: %s then %s", d1, d2)
	}

	archive := filepath.Join(t.TempDir(), "img.tar")
	const ref = "example.test/hoststack/tool:v1.2.3-4-gabcdef"
	if err := WriteArchive(archive, map[string]v1.Image{ref: img}); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(ref)
	back, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := back.Digest(); d != d1 {
		t.Errorf("archive digest %s, built %s", d, d1)
	}
	cf, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture == "" || cf.Config.User != "65532:65532" ||
		strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/tool" || cf.Config.Labels["k"] != "v" {
		t.Errorf("config: os %q arch %q user %q entrypoint %v labels %v", cf.OS, cf.Architecture, cf.Config.User, cf.Config.Entrypoint, cf.Config.Labels)
	}
	layers, err := back.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	base := entries(t, layers[0])
	if !bytes.Contains(base["etc/passwd"].data, []byte("nonroot:x:65532:65532:")) {
		t.Errorf("/etc/passwd: %q", base["etc/passwd"].data)
	}
	if h := base["tmp/"].h; h == nil || h.Mode != 0o1777 {
		t.Errorf("/tmp: %+v", h)
	}
	if h := base["home/nonroot/"].h; h == nil || h.Uid != NonRoot {
		t.Errorf("/home/nonroot: %+v", h)
	}
	top := entries(t, layers[1])
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if h := top[d].h; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o755 {
			t.Errorf("parent directory %s: %+v", d, h)
		}
	}
	if e := top["usr/local/bin/tool"]; e.h == nil || e.h.Mode != 0o755 || string(e.data) != "#!binary" || e.h.Uid != 0 {
		t.Errorf("tool: %+v %q", e.h, e.data)
	}
}

func TestLayerRefusesBadPaths(t *testing.T) {
	for _, tc := range []struct {
		files []File
		want  string
	}{
		{[]File{{Path: "relative", Data: []byte{}}}, "must be absolute"},
		{[]File{{Path: "/", Dir: true}}, "must be absolute and not /"},
		{[]File{{Path: "/a", Data: []byte{}}, {Path: "/a", Data: []byte{}}}, "given twice"},
		{[]File{{Path: "/a", Data: []byte{}}, {Path: "/a/b", Data: []byte{}}}, "is a file and a parent directory"},
		{[]File{{Path: "/a"}}, "neither Data nor Src"},
	} {
		if _, err := Layer(tc.files); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.files, err, tc.want)
		}
	}
}

func TestTag(t *testing.T) {
	for in, want := range map[string]string{
		"v0.1.0-3-gabc1234-dirty": "v0.1.0-3-gabc1234-dirty",
		"abc1234":                 "abc1234",
		"v1.0.0+build.5":          "v1.0.0-build.5",
		"-x":                      "v-x",
	} {
		if got := Tag(in); got != want {
			t.Errorf("Tag(%q) = %q, want %q", in, got, want)
		}
	}
}

// The archive format is what containerd 1.6 (Debian 12's, the version the
// e2e cluster runs) imports; the imported image runs under runc and the
// binary reports the version stamped at build time.
func TestContainerdImportsAndRuns(t *testing.T) {
	testreq.Root(t)
	for _, b := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			testreq.Missing(t, b+" is not installed (Debian packages containerd and runc)")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp("/var/tmp", "imagebuild-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	const stamp = "v0.0.0-test-stamp"
	bin := filepath.Join(tmp, "hoststack-cni")
	if err := BuildGo(ctx, GoBuild{Dir: root, Package: "./cmd/hoststack-cni", Output: bin, Version: stamp}); err != nil {
		t.Fatal(err)
	}
	img, err := Image(Spec{Files: []File{{Path: AgentCNIPath, Mode: 0o755, Src: bin}}, Entrypoint: []string{AgentCNIPath}, User: "65532:65532"})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(tmp, "img.tar")
	const ref = "ghcr.io/hoststack/imagebuild-test:" + stamp
	if err := WriteArchive(archive, map[string]v1.Image{ref: img}); err != nil {
		t.Fatal(err)
	}

	// A private containerd: its own root, state, socket and no CRI plugin,
	// so it touches nothing a cluster on this machine uses.
	sock := filepath.Join(tmp, "containerd.sock")
	cfg := filepath.Join(tmp, "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		filepath.Join(tmp, "root"), filepath.Join(tmp, "state"), sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cd := exec.Command("containerd", "--config", cfg)
	cd.Stdout, cd.Stderr = &logs, &logs
	if err := cd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cd.Process.Kill()
		_ = cd.Wait()
		if t.Failed() {
			t.Logf("containerd:\n%s", logs.String())
		}
	})
	ctr := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for {
		if _, err := ctr("version"); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("containerd did not start")
		case <-time.After(100 * time.Millisecond): // polling the socket until containerd serves it
		}
	}
	if out, err := ctr("images", "import", "--snapshotter", "native", archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err := ctr("images", "ls", "-q")
	if err != nil || !strings.Contains(out, ref) {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	out, err = ctr("run", "--rm", "--snapshotter", "native", ref, "imagebuild-test", AgentCNIPath, "--version")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	if strings.TrimSpace(out) != stamp {
		t.Errorf("the binary in the image reports %q, want %q", strings.TrimSpace(out), stamp)
	}
}

func TestAppName(t *testing.T) {
	for in, want := range map[string]string{
		"github.com/hoststack/hoststack/examples/echo/server":  "echo-server",
		"github.com/hoststack/hoststack/test/e2e/apps/e2eapp":  "e2eapp",
		"github.com/hoststack/hoststack/test/e2e/apps/tls/cli": "tls-cli",
		"example.com/tools/pause":                              "pause",
	} {
		if got := appName(in); got != want {
			t.Errorf("appName(%q) = %q, want %q", in, got, want)
		}
	}
}
