// Command images builds hoststack's container images without a container
// engine (see internal/imagebuild) as docker-archive tarballs, one per
// image, that `ctr -n k8s.io images import` loads:
//
//	go run ./hack/images -out bin/images
//	ctr -n k8s.io images import bin/images/hoststack-agent.tar
//
// It prints one line per image: reference, archive, digest.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/hoststack/hoststack/internal/imagebuild"
)

func main() {
	version := flag.String("version", "", "version stamped into the binaries (default: git describe --tags --always --dirty, else dev)")
	tag := flag.String("tag", "", "image tag (default: the version, made a valid tag)")
	out := flag.String("out", "bin/images", "directory for the archives")
	registry := flag.String("registry", imagebuild.DefaultRegistry, "registry and path the image names start with")
	images := flag.String("images", strings.Join([]string{imagebuild.ManagerImage, imagebuild.AgentImage, imagebuild.AppsImage}, ","), "comma-separated images to build")
	apps := flag.String("apps", "", "comma-separated main packages of the apps image (default: the echo example's server and client, and ./test/e2e/apps/... when it exists)")
	flag.Parse()

	if *version == "" {
		*version = gitDescribe()
	}
	var appList []string
	if *apps != "" {
		appList = strings.Split(*apps, ",")
	} else {
		appList = []string{"./examples/echo/server", "./examples/echo/client"}
		if _, err := os.Stat("test/e2e/apps"); err == nil {
			appList = append(appList, "./test/e2e/apps/...")
		}
	}
	res, err := imagebuild.Build(context.Background(), imagebuild.Options{
		Out: *out, Registry: *registry, Tag: *tag, Version: *version,
		Images: strings.Split(*images, ","), Apps: appList,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
	for _, r := range res {
		fmt.Printf("%s %s %s\n", r.Ref, r.Archive, r.Digest)
	}
}

// gitDescribe is the version the Makefile and the Dockerfile stamp.
func gitDescribe() string {
	b, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	if v := strings.TrimSpace(string(b)); err == nil && v != "" {
		return v
	}
	return "dev"
}
