package afpacket_test

import (
	"fmt"
	"os"
	"testing"
	"time"
)

func TestDebugLoss(t *testing.T) {
	e := newEnv(t, keepKernelAddrs)
	if os.Getenv("XDPLOSS") != "" { lossyLink(t, e.p.A, e.p.B, 1) } else { refuseOnEgress(t, e.p.A.NS, e.p.A.Dev, 1) }
	snap := func() [8]uint64 {
		s := e.s.Stats().TCP
		return [8]uint64{s.Timeouts.Value(), s.Retransmits.Value(), s.FastRecovery.Value(), s.SACKRecovery.Value(), s.TLPRecovery.Value(), s.SpuriousRTORecovery.Value(), s.SlowStartRetransmits.Value(), s.FastRetransmit.Value()}
	}
	for i := 0; i < 6; i++ {
		pfx := stack4
		if i%2 == 1 {
			pfx = stack6
		}
		c := e.stackDials(t, pfx)
		start := time.Now()
		before := snap()
		if err := transfer(c.stack, c.kernel, 32<<20, 1, 120*time.Second); err != nil {
			t.Fatal(err)
		}
		after := snap()
		var d [8]uint64
		for k := range d {
			d[k] = after[k] - before[k]
		}
		t.Logf("%s %v timeouts/retrans/fastrec/sackrec/tlp/spurRTO/ssretr/fastretr %v", family(pfx), time.Since(start).Round(time.Millisecond), d)
		c.close()
	}
	t.Log(fmt.Sprintf("%+v", e.ep.Stats()))
}
