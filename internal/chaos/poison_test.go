//go:build chaos

package chaos_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/internal/chaos"
	"github.com/mqrpc/mqrpc/middleware"
	"github.com/mqrpc/mqrpc/rpc"
)

// noReply is the outcome of a poison request that got no answer before its
// deadline: the server dropped it (or dead-lettered it) without replying.
const noReply = "no_reply"

// poison is one kind of bad input.
type poison struct {
	name string
	// msg builds the request sent with Broker.Request; nil when raw sends
	// it instead.
	msg func(subject string) *broker.Message
	// raw sends the poison with the broker's plain client and returns the
	// outcome (a code name or noReply).
	raw func(ctx context.Context, target chaos.Target, addr, subject string) (string, error)
	// want lists the acceptable outcomes.
	want []string
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func rawMsg(subject, method, contentType string, body []byte, extra ...string) *broker.Message {
	m := &broker.Message{Subject: subject, Header: broker.Header{}, Body: body}
	if method != "" {
		m.Header.Set(broker.HeaderMethod, method)
	}
	if contentType != "" {
		m.Header.Set(broker.HeaderContentType, contentType)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		m.Header.Set(extra[i], extra[i+1])
	}
	return m
}

const jsonCT = "application/json"

var (
	codeInvalid   = rpc.InvalidArgument.String()
	codeExhausted = rpc.ResourceExhausted.String()
)

func poisons() []poison {
	return []poison{
		{name: "garbage-body", want: []string{codeInvalid},
			msg: func(s string) *broker.Message { return rawMsg(s, chaos.MethodWork, jsonCT, randomBytes(256)) }},
		{name: "wrong-content-type", want: []string{codeInvalid},
			msg: func(s string) *broker.Message {
				return rawMsg(s, chaos.MethodWork, "application/x-chaos", []byte(`{"n":1}`))
			}},
		{name: "no-content-type-garbage", want: []string{codeInvalid},
			msg: func(s string) *broker.Message { return rawMsg(s, chaos.MethodWork, "", randomBytes(64)) }},
		{name: "no-method", want: []string{codeInvalid},
			msg: func(s string) *broker.Message { return rawMsg(s, "", jsonCT, []byte(`{"n":1}`)) }},
		{name: "unknown-method", want: []string{rpc.Unimplemented.String()},
			msg: func(s string) *broker.Message { return rawMsg(s, "NoSuchMethod", jsonCT, []byte(`{"n":1}`)) }},
		{name: "panicking-method", want: []string{rpc.Internal.String()},
			msg: func(s string) *broker.Message { return rawMsg(s, chaos.MethodPanic, jsonCT, []byte(`{"n":1}`)) }},
		{name: "body-over-server-limit-2MiB", want: []string{codeExhausted},
			msg: func(s string) *broker.Message {
				return rawMsg(s, chaos.MethodWork, jsonCT, append(append([]byte(`{"n":1,"pad":"`), make([]byte, 2<<20)...), `"}`...))
			}},
		{name: "body-over-broker-limit-9MiB", want: []string{codeExhausted},
			msg: func(s string) *broker.Message { return rawMsg(s, chaos.MethodWork, jsonCT, make([]byte, 9<<20)) }},
		{name: "header-70KiB", want: []string{codeExhausted, codeInvalid},
			msg: func(s string) *broker.Message {
				return rawMsg(s, chaos.MethodWork, jsonCT, []byte(`{"n":1}`), "x-chaos-big", strings.Repeat("h", 70<<10))
			}},
		// A header value that smuggles a line break and a second header:
		// it must arrive intact (OK) or be refused, never switch the
		// method to Panic.
		{name: "crlf-in-header", want: []string{rpc.OK.String(), codeInvalid},
			msg: func(s string) *broker.Message {
				return rawMsg(s, chaos.MethodWork, jsonCT, []byte(`{"n":1}`), "x-chaos", "a\r\nmqrpc-method: Panic\r\n")
			}},
		{name: "bad-deadline-header", want: []string{codeInvalid, noReply}, raw: sendBadDeadline},
	}
}

// runPoison injects every poison a few times while the load runs against
// one in-process server, and checks that each poison gets a clear answer
// in time and that the load does not notice.
func runPoison(t *testing.T, target chaos.Target, node *chaos.Node) {
	s := newScenario(t, target, "poison")
	defer s.finish()
	subj := subject("poison")
	srv := chaos.NewServer(s.log, middleware.NewMemoryDedupStore(0, 0))
	s.serveInProcess(node, subj, srv, "server")
	b, c := s.client(node)
	awaitService(t, c, subj, recoverWithin)
	pb, err := target.Open(node.Addr, "poisoner")
	require.NoError(t, err)
	s.closers = append(s.closers, func() { _ = pb.Close() })

	stopLoad := s.startLoad(c, b, s.loadConfig(subj))
	begin := time.Now()
	const repeats = 3
	type result struct {
		name, outcome string
		took          time.Duration
	}
	var (
		mu       sync.Mutex
		results  []result
		wg       sync.WaitGroup
		oneWayOK int
	)
	for _, p := range poisons() {
		for i := 0; i < repeats; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
				defer cancel()
				start := time.Now()
				var outcome string
				if p.raw != nil {
					o, err := p.raw(ctx, target, node.Addr, subj)
					if err != nil {
						o = "error: " + err.Error()
					}
					outcome = o
				} else {
					reply, err := pb.Request(ctx, p.msg(subj))
					if err == nil {
						err = rpc.ErrorFromReply(reply)
					}
					outcome = rpc.CodeOf(err).String()
					if !strings.Contains(strings.Join(p.want, " "), outcome) {
						t.Logf("poison %s: unexpected outcome: %v", p.name, err)
					}
				}
				mu.Lock()
				results = append(results, result{p.name, outcome, time.Since(start)})
				mu.Unlock()
			}()
		}
		if target.Durable && p.msg != nil {
			// One-way too: a stored poison must be consumed (answered or
			// dead-lettered), never block the queue behind it.
			ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
			if pb.Send(ctx, p.msg(subj)) == nil {
				oneWayOK++
			}
			cancel()
		}
	}
	wg.Wait()
	// Keep the load going as long as the scenario's duration asks.
	if rest := loadDuration(t) - time.Since(begin); rest > 0 {
		time.Sleep(rest)
	}
	res := stopLoad()
	s.load(res)
	assert.Equal(t, res.Calls, res.Codes[rpc.OK], "the poison disturbed the regular calls")

	byName := map[string]map[string]int{}
	for _, r := range results {
		if byName[r.name] == nil {
			byName[r.name] = map[string]int{}
		}
		byName[r.name][r.outcome]++
		assert.LessOrEqual(t, r.took, callDeadline+grace, "poison %s answered late", r.name)
	}
	var summary []string
	for _, p := range poisons() {
		var outs []string
		for o, n := range byName[p.name] {
			outs = append(outs, fmt.Sprintf("%s×%d", o, n))
			assert.Contains(t, p.want, o, "poison %s: outcome %s, want one of %v", p.name, o, p.want)
		}
		sort.Strings(outs)
		summary = append(summary, p.name+"→"+strings.Join(outs, ","))
	}
	t.Logf("poison outcomes: %s", strings.Join(summary, " "))
	s.note("poison: %s", strings.Join(summary, " "))
	if target.Durable {
		s.note("%d one-way poison messages stored", oneWayOK)
	}
}

// sendBadDeadline sends a Work request whose mqrpc-deadline header is not a
// number, with the broker's plain client (mqrpc's own clients cannot send
// one), and returns the status of the reply or noReply. On RocketMQ it is
// one-way: the server must drop it and go on serving; nobody waits for a
// reply.
func sendBadDeadline(ctx context.Context, target chaos.Target, addr, subject string) (string, error) {
	out, err := plainSend(ctx, target, addr, subject, plainMsg{
		id: broker.NewID(), method: chaos.MethodWork, deadline: "tomorrow-ish", body: []byte(`{"n":1}`),
		oneWay: target.Name == "rocketmq",
	})
	if out == outcomeSent {
		return noReply, err
	}
	return out, err
}
