package client_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/kernel"
)

// Child processes: the test binary re-executed with HS_TEST_CHILD naming a
// role. Roles talk to the parent over stdout lines ("ready ...") and to the
// engine over the attach socket in HS_TEST_SOCKET.
const (
	envChild  = "HS_TEST_CHILD"
	envSocket = "HS_TEST_SOCKET"
	envAddr   = "HS_TEST_ADDR"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envChild); role != "" {
		run := runChild
		if role == "engine" {
			run = runEngine
		}
		if err := run(role); err != nil {
			fmt.Fprintf(os.Stderr, "child %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// rawRoles are child roles that do not start by attaching with the client
// library; test files register theirs in init.
var rawRoles = map[string]func(role string) error{}

func runChild(role string) error {
	if f := rawRoles[role]; f != nil {
		return f(role)
	}
	ctx := context.Background()
	opts := client.Options{Socket: os.Getenv(envSocket), Name: "child-" + role, Spin: os.Getenv("HS_TEST_SPIN") == "1"}
	if role == "restart-echo" {
		// tell the parent when the engine goes and when the app is back
		opts.OnEngine = func(attached bool, err error) {
			if attached {
				fmt.Println("attached")
			} else {
				fmt.Println("lost", err)
			}
		}
	}
	app, err := client.Attach(ctx, opts)
	if err != nil {
		return err
	}
	defer app.Close()
	switch role {
	case "hash-server":
		// accept one session, hash everything until EOF, answer the digest
		ln, err := app.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		fmt.Println("ready", ln.Addr())
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return err
		}
		fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
		return c.Close()
	case "echo-server", "restart-echo":
		ln, err := app.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		fmt.Println("ready", ln.Addr())
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	case "sink-server":
		ln, err := app.Listen("tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		fmt.Println("ready", ln.Addr())
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				b := make([]byte, 256<<10)
				for {
					if _, err := c.Read(b); err != nil {
						break
					}
				}
				c.Close()
			}()
		}
	case "write-close-exit":
		// dial, write, close the session and exit at once, without
		// App.Close: the engine must still deliver the data and the end of
		// stream (TCP's close-then-exit)
		c, err := app.Dial(ctx, "tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		fmt.Println("ready", c.LocalAddr())
		if _, err := c.Write([]byte("last words")); err != nil {
			return err
		}
		c.Close()
		os.Exit(0)
	case "endless-writer":
		// dial the parent and write until killed
		c, err := app.Dial(ctx, "tcp", os.Getenv(envAddr))
		if err != nil {
			return err
		}
		fmt.Println("ready", c.LocalAddr())
		buf := make([]byte, 32<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("unknown role %q", role)
}

// child is a running child process.
type child struct {
	cmd   *exec.Cmd
	lines *bufio.Scanner
}

func startChild(t testing.TB, role, sock, addr string) (*child, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+role, envSocket+"="+sock, envAddr+"="+addr)
	cmd.Stderr = childStderr()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := &child{cmd: cmd, lines: bufio.NewScanner(out)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if !ch.lines.Scan() {
		t.Fatalf("child %s exited before it was ready", role)
	}
	var word, info string
	fmt.Sscan(ch.lines.Text(), &word, &info)
	if word != "ready" {
		t.Fatalf("child %s said %q", role, ch.lines.Text())
	}
	return ch, info
}

// childStderr is where children's diagnostics go: $HS_TEST_CHILD_LOG if set
// (a file, appended), else the test's stderr.
func childStderr() io.Writer {
	if p := os.Getenv("HS_TEST_CHILD_LOG"); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			return f
		}
	}
	return os.Stderr
}

const envRunDir = "HS_TEST_RUNDIR"

// runEngine is the "engine" child: a session engine with the kernel
// transport serving one app namespace in $HS_TEST_RUNDIR until killed.
func runEngine(string) error {
	e, err := session.New(session.Config{RunDir: os.Getenv(envRunDir), Transport: kernel.New(kernel.Options{}),
		Logf: func(f string, a ...any) { fmt.Fprintf(os.Stderr, "engine: "+f+"\n", a...) }})
	if err != nil {
		return err
	}
	sock, err := e.AddNamespace(session.NamespaceConfig{Namespace: "restart", Name: "default", RxFifoSize: 1 << 20, TxFifoSize: 1 << 20})
	if err != nil {
		return err
	}
	fmt.Println("ready", sock)
	select {} // until killed
}
