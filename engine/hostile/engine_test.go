//go:build !race

package hostile

import (
	"bufio"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/kernel"
)

// Limits of the suite's app namespace: small, so that the hostile app
// reaches every one of them quickly.
const (
	nsMaxApps     = 16
	nsMaxSessions = 48
	nsMaxWorkers  = 4
)

// namespaceConfig is the app namespace the good pair, the probes and the
// hostile app share.
func namespaceConfig() session.NamespaceConfig {
	return session.NamespaceConfig{Namespace: "team", Name: "apps",
		SegmentSize: 4 << 20, RxFifoSize: 64 << 10, TxFifoSize: 64 << 10, QueueSlots: 256,
		MaxApps: nsMaxApps, MaxSessionsPerApp: nsMaxSessions, MaxWorkersPerApp: nsMaxWorkers}
}

// runEngine is the engine process: an engine with the kernel transport in
// this network namespace and one app namespace. It prints "ready <socket>",
// answers "stats <n>" on stdin with its goroutine count, and on SIGTERM
// closes the engine and prints "stopped".
func runEngine() error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	logger := log.New(os.Stderr, "engine: ", log.Lmicroseconds)
	tr := kernel.New(kernel.Options{Logf: logger.Printf})
	e, err := session.New(session.Config{RunDir: os.Getenv(envRunDir), Transport: tr, Logf: logger.Printf})
	if err != nil {
		return err
	}
	sock, err := e.AddNamespace(namespaceConfig())
	if err != nil {
		return err
	}
	out := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if seq, ok := strings.CutPrefix(sc.Text(), "stats "); ok {
				out <- fmt.Sprintf("stats %s goroutines=%d", seq, runtime.NumGoroutine())
			}
		}
	}()
	fmt.Println("ready", sock)
	for {
		select {
		case l := <-out:
			fmt.Println(l)
		case <-term:
			if err := e.Close(); err != nil {
				return err
			}
			fmt.Println("stopped")
			return nil
		}
	}
}
