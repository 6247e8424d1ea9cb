//go:build chaos

package chaos_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/rpc"
)

// fastPoisonDeadline is the deadline of the crashing request of
// runFastCrashPoison.
const fastPoisonDeadline = 4 * time.Second

// runFastCrashPoison pins what RabbitMQ fast mode does with a request that
// crashes its server process (docs/RELIABILITY.md, "A request that crashes
// its server in RabbitMQ fast mode"): it counts nothing, so RabbitMQ hands
// the request to the next server, which it crashes too, until no server is
// left (the auto-delete queue goes with its last consumer, and the request
// with it) or its deadline passes. Then the restarted servers serve, and
// none crashes again. Two server processes, each restarted by a supervisor
// after a crash.
func runFastCrashPoison(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "crash-poison")
	defer s.finish()
	subj := subject("fastcrash")
	env := chaos.ChildEnv(target, node.Addr, subj, t.TempDir())
	var svs []*supervisor
	for range 2 {
		sv, err := startSupervisor(env, s.log, 50)
		require.NoError(t, err)
		s.closers = append(s.closers, sv.Stop)
		svs = append(svs, sv)
	}
	crashes := func() (n int) {
		for _, sv := range svs {
			n += sv.Crashes()
		}
		return n
	}
	b, c := s.client(node)
	awaitService(t, rpc.NewClient(b), subj, recoverWithin)

	_, body := trackedBody()
	poisonID := "poison-" + broker.NewID()
	deadline := time.Now().Add(fastPoisonDeadline)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	_, err := b.Request(ctx, request(subj, chaos.MethodCrash, poisonID, body, deadline))
	cancel()
	assert.Contains(t, []rpc.Code{rpc.DeadlineExceeded, rpc.Unavailable}, rpc.CodeOf(err), "the poison's caller: %v", err)

	// After its deadline the poison is dropped wherever it is: the
	// service comes back, and stays up.
	time.Sleep(time.Until(deadline))
	back, up := time.Duration(0), false
	for !up && time.Since(deadline) < 30*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var out chaos.WorkReply
		up = rpc.NewClient(b).Call(ctx, subj, chaos.MethodWork, &chaos.WorkRequest{N: -1}, &out) == nil
		cancel()
		if !up {
			time.Sleep(200 * time.Millisecond) // poll interval of a bounded wait
		}
		back = time.Since(deadline)
	}
	settled := crashes()
	time.Sleep(3 * time.Second) // time for a late delivery of the poison to show
	starts := s.log.Starts(chaos.MethodCrash, poisonID)
	var late []time.Duration
	for _, at := range starts {
		if at.After(deadline.Add(time.Second)) { // a second for the child's report to arrive
			late = append(late, at.Sub(deadline).Round(time.Millisecond))
		}
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		outcomes = map[string]rpc.Code{}
	)
	for range 10 {
		wg.Go(func() {
			id := "hcall-" + broker.NewID()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out chaos.WorkReply
			err := c.Call(ctx, subj, chaos.MethodWork, &chaos.WorkRequest{N: 1}, &out, rpc.WithMessageID(id))
			mu.Lock()
			outcomes[id] = rpc.CodeOf(err)
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, sv := range svs {
		s.victims = append(s.victims, sv.names...)
	}
	codes := map[rpc.Code]int64{}
	for _, code := range outcomes {
		codes[code]++
	}
	s.outcomes, s.row.Calls, s.row.Codes = outcomes, int64(len(outcomes)), chaos.FormatCodes(codes)
	s.note("poison (deadline %v): %d deliveries reached the handler, %d processes crashed, %d after the deadline; service answering %v (%v after the deadline)",
		fastPoisonDeadline, len(starts), crashes(), len(late), up, back.Round(time.Millisecond))
	t.Logf("%s", s.row.Note)
	for _, sv := range svs {
		assert.NoError(t, sv.err)
	}
	assert.True(t, up, "the service did not answer within 30 s of the poison's deadline")
	assert.NotEmpty(t, starts, "the poison never reached a handler")
	// Each running server once, give or take a restart that came in
	// between: then the auto-delete queue went with its last consumer.
	assert.LessOrEqual(t, crashes(), 2*len(svs), "the poison went on crashing the restarted servers")
	assert.Empty(t, head(fmtDurations(late)), "the poison was delivered after its deadline (by this much)")
	assert.Equal(t, settled, crashes(), "servers crashed after the poison's deadline")
	assert.Equal(t, int64(len(outcomes)), codes[rpc.OK], "calls after the poison's deadline did not all succeed: %s", s.row.Codes)
}

func fmtDurations(ds []time.Duration) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}
