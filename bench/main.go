// Command bench measures hoststack side by side with the kernel paths it
// replaces, in one run on one machine, and reports ratios: absolute figures on
// a shared 2-core machine are noisy, ratios measured back to back are not.
//
//	go run ./bench -out bench/results.json
//
// Every variant moves the same bytes through the same net.Conn code path
// (writer goroutine → reader goroutine), so the difference is the transport.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hoststack/hoststack/agent/netpol/netpolbench"
	"github.com/hoststack/hoststack/engine/rules/rulesbench"
)

// Result is one measured figure.
type Result struct {
	Group   string  `json:"group"`   // e.g. "stream", "rr", "connect", "memory"
	Case    string  `json:"case"`    // e.g. "64KiB"
	Variant string  `json:"variant"` // e.g. "hoststack", "tcp-loopback"
	Value   float64 `json:"value"`
	Unit    string  `json:"unit"`
}

// Target is one acceptance target: Ratio = Num/Den (of two Results' values),
// met when Ratio >= Min (or <= Max when Max is set).
type Target struct {
	Name  string  `json:"name"`
	Ratio float64 `json:"ratio"`
	Min   float64 `json:"min,omitempty"`
	Max   float64 `json:"max,omitempty"`
	Met   bool    `json:"met"`
	Note  string  `json:"note,omitempty"`
}

// Report is what bench/results.json holds.
type Report struct {
	Time     time.Time `json:"time"`
	GoVer    string    `json:"go"`
	CPUs     int       `json:"cpus"`
	Duration string    `json:"durationPerPoint"`
	// Measured says when each group's figures were taken (a run with
	// -only keeps the other groups' figures of the file it updates).
	Measured map[string]string `json:"measured,omitempty"`
	Results  []Result          `json:"results"`
	Targets  []Target          `json:"targets"`
}

func (r *Report) add(group, cs, variant string, v float64, unit string) {
	r.Results = append(r.Results, Result{group, cs, variant, v, unit})
	fmt.Fprintf(os.Stderr, "  %-8s %-12s %-14s %12.3f %s\n", group, cs, variant, v, unit)
}

func (r *Report) get(group, cs, variant string) (float64, bool) {
	for _, x := range r.Results {
		if x.Group == group && x.Case == cs && x.Variant == variant {
			return x.Value, true
		}
	}
	return 0, false
}

// target records Num/Den against a bound; a missing figure is recorded as unmet.
func (r *Report) target(name string, num, den [3]string, min, max float64) {
	a, ok1 := r.get(num[0], num[1], num[2])
	b, ok2 := r.get(den[0], den[1], den[2])
	t := Target{Name: name, Min: min, Max: max}
	if !ok1 || !ok2 || b == 0 {
		t.Note = "not measured"
		r.Targets = append(r.Targets, t)
		return
	}
	t.Ratio = a / b
	switch {
	case max > 0:
		t.Met = t.Ratio <= max
	default:
		t.Met = t.Ratio >= min
	}
	r.Targets = append(r.Targets, t)
}

// groups are the measurement groups, in the order they run.
var groups = []string{"stream", "rr", "busy", "connect", "memory", "scale", "rules", "netpol", "transport"}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		runChild(os.Args[2:]) // a child of a run (child.go); never returns
	}
	out := flag.String("out", "bench/results.json", "where to write the JSON report")
	dur := flag.Duration("d", 700*time.Millisecond, "measuring time per point (each point is the median of -n runs)")
	runs := flag.Int("n", 3, "runs per point")
	only := flag.String("only", "", "comma-separated groups to run ("+strings.Join(groups, ",")+"); empty = all")
	merge := flag.Bool("merge", true, "with -only, keep the other groups' figures of the -out file (targets are recomputed over all)")
	onlyVariants := flag.String("variants", "", "comma-separated variants to run (e.g. hoststack,tcp-loopback); empty = all")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}

	want := func(g string) bool {
		if *only == "" {
			return true
		}
		for _, x := range strings.Split(*only, ",") {
			if x == g {
				return true
			}
		}
		return false
	}

	rep := &Report{Time: time.Now().UTC(), GoVer: runtime.Version(), CPUs: runtime.NumCPU(), Duration: dur.String(),
		Measured: map[string]string{}}
	var ran []string
	for _, g := range groups {
		if want(g) {
			ran = append(ran, g)
			rep.Measured[g] = rep.Time.Format("2006-01-02T15:04:05Z")
		}
	}
	variants, cleanup, err := setupVariants()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer cleanup()
	if *onlyVariants != "" {
		var keep []variant
		for _, v := range variants {
			if strings.Contains(","+*onlyVariants+",", ","+v.name+",") {
				keep = append(keep, v)
			}
		}
		variants = keep
	}

	m := measurer{d: *dur, n: *runs}
	if want("stream") {
		fmt.Fprintln(os.Stderr, "stream throughput (one writer, one reader):")
		for _, size := range []int{64, 1 << 10, 16 << 10, 64 << 10} {
			cs := sizeName(size)
			for _, v := range variants {
				gbps, err := m.stream(v, size)
				if err != nil {
					fail(v.name, "stream", err)
				}
				rep.add("stream", cs, v.name, gbps, "GB/s")
			}
			rep.add("stream", cs, "memcpy", m.memcpy(size), "GB/s")
		}
	}
	if want("rr") {
		fmt.Fprintln(os.Stderr, "64 B request/response round trip:")
		for _, v := range variants {
			p50, p99, err := m.rr(v, 64)
			if err != nil {
				fail(v.name, "rr", err)
			}
			rep.add("rr", "p50", v.name, float64(p50.Nanoseconds())/1e3, "us")
			rep.add("rr", "p99", v.name, float64(p99.Nanoseconds())/1e3, "us")
		}
	}
	if want("busy") {
		fmt.Fprintln(os.Stderr, "64 KiB stream and 64 B round trip, quiet and with one core kept busy by another process:")
		runBusy(rep, m, variants)
	}
	if want("connect") {
		fmt.Fprintln(os.Stderr, "connect+accept+close:")
		for _, v := range variants {
			rate, retries, err := m.connect(v)
			if err != nil {
				fail(v.name, "connect", err)
			}
			rep.add("connect", "rate", v.name, rate, "conn/s")
			if retries > 0 {
				rep.add("connect", "queue-full-retries", v.name, float64(retries), "connects")
			}
		}
	}
	if want("memory") {
		fmt.Fprintln(os.Stderr, "memory per idle session (1,000 sessions):")
		resident, reserved, err := idleSessionMemory()
		if err != nil {
			fail("hoststack", "memory", err)
		}
		rep.add("memory", "idle-session-resident", "hoststack", resident, "bytes")
		rep.add("memory", "idle-session-fifo-reserved", "hoststack", reserved, "bytes")
		fmt.Fprintln(os.Stderr, "fifo memory of a session that streamed (20 sessions):")
		streamed, quiet, err := streamedSessionMemory()
		if err != nil {
			fail("hoststack", "memory", err)
		}
		rep.add("memory", "streamed-session-fifo-resident", "hoststack", streamed, "bytes")
		rep.add("memory", "quiet-session-fifo-resident", "hoststack", quiet, "bytes")
	}

	if want("scale") {
		fmt.Fprintln(os.Stderr, "scale (engine in this process, apps in a child process):")
		runScale(rep, m, variants)
	}

	if want("rules") {
		fmt.Fprintln(os.Stderr, "session rule lookups (engine/rules):")
		res, err := rulesbench.Run(*dur)
		if err != nil {
			fail("rules", "lookup", err)
		}
		for _, x := range res {
			rep.add("rules", x.Case, "hoststack", x.Value, x.Unit)
		}
	}

	if want("netpol") {
		fmt.Fprintln(os.Stderr, "NetworkPolicy decisions for cut-through sessions (agent/netpol, 10,000 policies):")
		res, err := netpolbench.Run(*dur)
		if err != nil {
			fail("netpol", "decide", err)
		}
		for _, x := range res {
			rep.add("netpol", x.Case, "hoststack", x.Value, x.Unit)
		}
	}

	if want("transport") {
		fmt.Fprintln(os.Stderr, "transports over a veth between two network namespaces (needs root):")
		runTransport(rep, m)
	}

	if *only != "" && *merge {
		old, err := readReport(*out)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: not merging:", err)
		} else {
			mergeInto(rep, old, ran)
		}
	}
	addTargets(rep)
	printTable(rep)
	data, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(*out, append(data, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "wrote", *out)
}

func addTargets(r *Report) {
	// A fixed 1 µs reference so an absolute bound reads as a ratio.
	r.Results = append(r.Results, Result{"rr", "p50", "unit-1us", 1, "us"})
	s := func(cs, v string) [3]string { return [3]string{"stream", cs, v} }
	r.target("64KiB stream >= 8x TCP loopback", s("64KiB", "hoststack"), s("64KiB", "tcp-loopback"), 8, 0)
	r.target("64KiB stream >= 0.5x memcpy", s("64KiB", "hoststack"), s("64KiB", "memcpy"), 0.5, 0)
	r.target("64B stream >= 20x TCP loopback", s("64B", "hoststack"), s("64B", "tcp-loopback"), 20, 0)
	r.target("64B RR p50 <= 1/5 TCP loopback (default mode)", [3]string{"rr", "p50", "hoststack"}, [3]string{"rr", "p50", "tcp-loopback"}, 0, 0.2)
	r.target("64B RR p50 spin mode <= 2us (vs 1us)", [3]string{"rr", "p50", "hoststack-spin"}, [3]string{"rr", "p50", "unit-1us"}, 0, 2)
	r.target("connect rate >= 2x TCP loopback", [3]string{"connect", "rate", "hoststack"}, [3]string{"connect", "rate", "tcp-loopback"}, 2, 0)
	r.target("64KiB stream >= 10x TCP loopback (default FIFOs, issue 16)", s("64KiB", "hoststack"), s("64KiB", "tcp-loopback"), 10, 0)
	b := func(cs, v string) [3]string { return [3]string{"busy", cs, v} }
	r.target("busy: 64KiB stream >= 8x TCP loopback, one core busy", b("stream-64KiB-busy", "hoststack"), b("stream-64KiB-busy", "tcp-loopback"), 8, 0)
	r.target("busy: 64B RR p50 <= TCP loopback's, one core busy", b("rr-p50-busy", "hoststack"), b("rr-p50-busy", "tcp-loopback"), 0, 1)
	r.target("busy: 64B RR p50 <= TCP loopback's, quiet", b("rr-p50-quiet", "hoststack"), b("rr-p50-quiet", "tcp-loopback"), 0, 1)
	sc := func(cs, v string) [3]string { return [3]string{"scale", cs, v} }
	r.target("scale: 1,000 apps attached", sc("apps", "hoststack"), sc("ref-apps", "hoststack"), 1, 0)
	r.target("scale: engine threads at 1,000 apps <= 2x before (bounded)", sc("apps-engine-threads", "hoststack"), sc("apps-engine-threads-before", "hoststack"), 0, 2)
	for _, v := range []string{"cut-through", "kernel-transport"} {
		r.target("scale: 100,000 idle sessions open, "+v, sc("sessions", v), sc("ref-sessions", "hoststack"), 1, 0)
		r.target("scale: private memory per idle session <= 2 KiB, "+v, sc("session-private", v), sc("ref-2KiB", "hoststack"), 0, 1)
	}
	r.target("scale: connect rate >= 5x TCP loopback", sc("connect-rate", "hoststack"), sc("connect-rate", "tcp-loopback"), 5, 0)
	// per-session events: idle sessions beside it cost an active one
	// little (the mean shows the rare slow round trip a p50 hides)
	r.target("scale: a session's mean RR beside the idle kernel-transport sessions <= 1.5x alone", sc("rr-mean-probe-beside-idle", "kernel-transport"), sc("rr-mean-probe-alone", "kernel-transport"), 0, 1.5)
	rl := func(cs string) [3]string { return [3]string{"rules", cs, "hoststack"} }
	r.Results = append(r.Results, Result{"rules", "ref-100ns", "hoststack", 100, "ns/op"}, Result{"rules", "ref-1s", "hoststack", 1000, "ms"})
	r.target("rule lookup at 100k <= 3x lookup at 10", rl("lookup-100000"), rl("lookup-10"), 0, 3)
	r.target("rule lookup at 100k <= 100 ns", rl("lookup-100000"), rl("ref-100ns"), 0, 1)
	r.target("compile+swap 100k rules < 1 s", rl("compile-100000"), rl("ref-1s"), 0, 1)
	tr := func(cs, v string) [3]string { return [3]string{"transport", cs, v} }
	r.target("kernel transport single flow >= 0.95x a plain kernel socket", tr("1flow", "engine-kernel"), tr("1flow", "kernel"), 0.95, 0)
	r.target("kernel transport 4 flows >= 0.95x a plain kernel socket", tr("4flow", "engine-kernel"), tr("4flow", "kernel"), 0.95, 0)
	r.target("kernel transport 64B RR p50 <= 1.2x a plain kernel socket", tr("rr-p50", "engine-kernel"), tr("rr-p50", "kernel"), 0, 1.2)
	r.target("kernel transport 64B RR p50 from an app process <= 1.2x (paired)", tr("rr-p50-app-process", "engine-kernel"), tr("rr-p50-app-process-kernel-alongside", "engine-kernel"), 0, 1.2)
	r.target("netstack-afpacket 64B RR p50 from an app process <= kernel (paired)", tr("rr-p50-app-process", "netstack-afpacket"), tr("rr-p50-app-process-kernel-alongside", "netstack-afpacket"), 0, 1)
	r.target("netstack-afxdp 64B RR p50 from an app process <= kernel (paired)", tr("rr-p50-app-process", "netstack-afxdp"), tr("rr-p50-app-process-kernel-alongside", "netstack-afxdp"), 0, 1)
	r.target("netstack-afxdp single flow >= 0.8x kernel", tr("1flow", "netstack-afxdp"), tr("1flow", "kernel"), 0.8, 0)
	r.target("netstack-afpacket single flow >= 0.8x kernel", tr("1flow", "netstack-afpacket"), tr("1flow", "kernel"), 0.8, 0)
	// No stalls: the runs that completed over the runs made (ref-stall-runs, 20) must be 1.
	r.target("netstack-afpacket 20x64MiB runs, none stalled", tr("stall-free", "netstack-afpacket"), tr("ref-stall-runs", "netstack-afpacket"), 1, 0)
	r.target("netstack-afxdp 20x64MiB runs, none stalled", tr("stall-free", "netstack-afxdp"), tr("ref-stall-runs", "netstack-afxdp"), 1, 0)
	r.target("TLS single flow >= 0.7x plaintext, kernel transport", tr("tls", "engine-kernel"), tr("tls-plain", "engine-kernel"), 0.7, 0)
	r.target("TLS single flow >= 0.7x plaintext, netstack-afpacket", tr("tls", "netstack-afpacket"), tr("tls-plain", "netstack-afpacket"), 0.7, 0)
}

func printTable(r *Report) {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "GROUP\tCASE\tVARIANT\tVALUE\tUNIT\tvs tcp-loopback (transport: vs kernel)")
	rs := append([]Result(nil), r.Results...)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Group < rs[j].Group })
	for _, x := range rs {
		if x.Variant == "unit-1us" || strings.HasPrefix(x.Case, "ref-") {
			continue // fixed references for absolute targets
		}
		ratio := ""
		ref := "tcp-loopback"
		if x.Group == "transport" {
			ref = "kernel"
		}
		if base, ok := r.get(x.Group, x.Case, ref); ok && base != 0 && x.Variant != ref {
			ratio = fmt.Sprintf("%.2fx", x.Value/base)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%.3f\t%s\t%s\n", x.Group, x.Case, x.Variant, x.Value, x.Unit, ratio)
	}
	w.Flush()
	fmt.Println()
	w = tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TARGET\tRATIO\tMET")
	for _, t := range r.Targets {
		met := "yes"
		if !t.Met {
			met = "NO"
		}
		if t.Note != "" {
			met += " (" + t.Note + ")"
		}
		fmt.Fprintf(w, "%s\t%.3f\t%s\n", t.Name, t.Ratio, met)
	}
	w.Flush()
}

func sizeName(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

func fail(variant, what string, err error) {
	fmt.Fprintf(os.Stderr, "bench: %s %s: %v\n", variant, what, err)
	os.Exit(1)
}
