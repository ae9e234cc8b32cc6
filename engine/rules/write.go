package rules

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
)

// WriteTable prints rules as an aligned text table, one line per rule, in
// the order given (use Set.Dump for the engine's order). Port 0 prints as
// "*", an empty tag or redirect target as "-".
func WriteTable(w io.Writer, rules []Rule) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tSCOPE\tPROTO\tLOCAL\tLPORT\tREMOTE\tRPORT\tACTION\tTARGET\tRULE\tTAG")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	port := func(p uint16) string {
		if p == 0 {
			return "*"
		}
		return strconv.Itoa(int(p))
	}
	for i := range rules {
		r := &rules[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			r.Namespace, r.Scope, r.Proto, r.Local, port(r.LocalPort), r.Remote, port(r.RemotePort),
			r.Action, dash(r.RedirectApp), r.Name, dash(r.Tag))
	}
	return tw.Flush()
}
