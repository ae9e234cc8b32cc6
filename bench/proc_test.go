package main

import (
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	const text = `Name:	bench
Threads:	17
VmRSS:	  204800 kB
RssAnon:	  102400 kB
RssFile:	   51200 kB
RssShmem:	   51200 kB
`
	st, err := parseStatus(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := procStatus{RSS: 200 << 20, Anon: 100 << 20, File: 50 << 20, Shmem: 50 << 20, Threads: 17}
	if st != want {
		t.Fatalf("got %+v, want %+v", st, want)
	}
	// A status without RssAnon must not read as zero private memory.
	if _, err := parseStatus(strings.NewReader("VmRSS:	1 kB\nThreads:	1\n")); err == nil {
		t.Fatal("a status lacking fields parsed without an error")
	}
}

func TestParseStatCPU(t *testing.T) {
	// The command name holds a space and a parenthesis; utime 1234, stime 56.
	line := "42 (we) ird) S 1 42 42 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 3 0 100 1000 10"
	got, err := parseStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if got != 1290 {
		t.Fatalf("got %d ticks, want 1290", got)
	}
	if _, err := parseStatCPU("42 (x) S 1"); err == nil {
		t.Fatal("a short stat line parsed without an error")
	}
}
