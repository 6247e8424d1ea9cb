package kernel_test

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/kernel"
)

// msg returns a builder of a message whose body is s.
func msg(s string) func() *broker.Message {
	return func() *broker.Message { return &broker.Message{Body: []byte(s)} }
}

// token is the part of an inbox's address after prefix.
func token(t *testing.T, in broker.Inbox, prefix string) string {
	t.Helper()
	tok, ok := strings.CutPrefix(in.Addr(), prefix)
	require.True(t, ok, "address %q lacks prefix %q", in.Addr(), prefix)
	require.NotEmpty(t, tok)
	return tok
}

// Messages reach the inbox of their token, in the order dispatched; a
// token that is no inbox's drops its message without building it.
func TestStreamInboxesRoute(t *testing.T) {
	var tab kernel.Inboxes // the zero value is ready
	var a, b []string
	ina := tab.Open("q/", func(m *broker.Message) { a = append(a, string(m.Body)) })
	inb := tab.Open("q/", func(m *broker.Message) { b = append(b, string(m.Body)) })
	ta, tb := token(t, ina, "q/"), token(t, inb, "q/")
	require.NotEqual(t, ta, tb)
	assert.Equal(t, 2, tab.Len())

	for i := range 100 {
		tok := ta
		if i%3 == 0 {
			tok = tb
		}
		require.True(t, tab.Dispatch(tok, msg(strconv.Itoa(i))))
	}
	built := false
	assert.False(t, tab.Dispatch("nope", func() *broker.Message { built = true; return &broker.Message{} }))
	assert.False(t, built, "a message for no inbox is built")

	var wantA, wantB []string
	for i := range 100 {
		if i%3 == 0 {
			wantB = append(wantB, strconv.Itoa(i))
		} else {
			wantA = append(wantA, strconv.Itoa(i))
		}
	}
	assert.Equal(t, wantA, a)
	assert.Equal(t, wantB, b)
}

// A closed inbox gets nothing more, its messages are not built, Close is
// idempotent, closing one inbox leaves the others, and a token is never
// given again.
func TestStreamInboxesClose(t *testing.T) {
	var tab kernel.Inboxes
	var got []string
	in := tab.Open("p.", func(m *broker.Message) { got = append(got, string(m.Body)) })
	other := 0
	out := tab.Open("p.", func(*broker.Message) { other++ })
	tok, otok := token(t, in, "p."), token(t, out, "p.")

	require.True(t, tab.Dispatch(tok, msg("1")))
	require.NoError(t, in.Close())
	require.NoError(t, in.Close())
	built := false
	assert.False(t, tab.Dispatch(tok, func() *broker.Message { built = true; return &broker.Message{} }))
	assert.False(t, built)
	assert.Equal(t, []string{"1"}, got)
	assert.Equal(t, 1, tab.Len())

	assert.True(t, tab.Dispatch(otok, msg("x")))
	assert.Equal(t, 1, other)

	seen := map[string]bool{tok: true, otok: true}
	for range 50 {
		n := tab.Open("p.", func(*broker.Message) {})
		nt := token(t, n, "p.")
		assert.False(t, seen[nt], "token %q given twice", nt)
		seen[nt] = true
		require.NoError(t, n.Close())
	}
	assert.False(t, tab.Dispatch(tok, msg("2")), "a closed inbox's token was given again")
	assert.Equal(t, []string{"1"}, got)
}

// An inbox's function may close its inbox (without deadlock); nothing is
// handed to it after that call.
func TestStreamInboxesCloseFromFunction(t *testing.T) {
	var tab kernel.Inboxes
	var in broker.Inbox
	var got []string
	in = tab.Open("", func(m *broker.Message) {
		got = append(got, string(m.Body))
		if string(m.Body) == "stop" {
			require.NoError(t, in.Close())
			require.NoError(t, in.Close())
		}
	})
	tok := in.Addr()
	for _, s := range []string{"a", "stop", "b", "c"} {
		tab.Dispatch(tok, msg(s))
	}
	assert.Equal(t, []string{"a", "stop"}, got)
	assert.Equal(t, 0, tab.Len())
}

// Dispatches from several goroutines (a broker whose receiving runs on
// more than one) hand an inbox its messages one at a time, each sender's
// in order; once closed, it gets none of theirs.
func TestStreamInboxesOneAtATime(t *testing.T) {
	const senders, each = 4, 500
	var tab kernel.Inboxes
	var running atomic.Int32
	var overlaps atomic.Int32
	last := make([]int, senders) // guarded by the one-at-a-time promise
	var disorder atomic.Int32
	calls := 0
	in := tab.Open("", func(m *broker.Message) {
		if running.Add(1) != 1 {
			overlaps.Add(1)
		}
		s, n, _ := strings.Cut(string(m.Body), "/")
		si, _ := strconv.Atoi(s)
		ni, _ := strconv.Atoi(n)
		if ni != last[si]+1 {
			disorder.Add(1)
		}
		last[si] = ni
		calls++
		running.Add(-1)
	})
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 1; n <= each; n++ {
				tab.Dispatch(in.Addr(), msg(strconv.Itoa(s)+"/"+strconv.Itoa(n)))
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, overlaps.Load(), "calls of one inbox's function overlapped")
	assert.Zero(t, disorder.Load(), "a sender's messages arrived out of order")
	assert.Equal(t, senders*each, calls)

	require.NoError(t, in.Close())
	for s := range senders {
		assert.False(t, tab.Dispatch(in.Addr(), msg(strconv.Itoa(s)+"/x")))
	}
	assert.Equal(t, senders*each, calls)
}
