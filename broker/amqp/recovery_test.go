package amqp_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

func open(t testing.TB, url string, opts ...amqp.Option) *amqp.Broker {
	t.Helper()
	b, err := amqp.New(url, append([]amqp.Option{
		amqp.WithReconnectBackoff(50*time.Millisecond, 500*time.Millisecond),
		amqp.WithConnectionName(t.Name()),
	}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func serve(t testing.TB, b broker.Broker, subject string, h broker.HandlerFunc, opts ...broker.ServeOption) broker.Subscription {
	t.Helper()
	sub, err := b.Serve(subject, h, opts...)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sub.Stop(ctx)
	})
	return sub
}

func echo(_ context.Context, req *broker.Message) (*broker.Message, error) {
	return &broker.Message{Header: req.Header, Body: req.Body}, nil
}

// TestInFlightFailDisconnected drops every connection (of a private vhost)
// while calls wait for their replies: they must fail at once with
// ErrDisconnected, long before their deadline, and the broker must recover
// by itself without leaking goroutines.
func TestInFlightFailDisconnected(t *testing.T) {
	url, vhost := vhostURL(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	var logs testenv.LogBuffer
	func() {
		srv := open(t, url)
		client := open(t, url, amqp.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		subj := "inflight-" + broker.NewID()
		release := make(chan struct{})
		var started atomic.Int64
		serve(t, srv, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if string(req.Body) == "block" {
				started.Add(1)
				select {
				case <-release:
				case <-ctx.Done():
				}
			}
			return echo(ctx, req)
		})
		const calls = 8
		errs := make(chan error, calls)
		begin := time.Now()
		for i := 0; i < calls; i++ {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				_, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("block")})
				errs <- err
			}()
		}
		require.Eventually(t, func() bool { return started.Load() == calls }, 10*time.Second, 10*time.Millisecond)
		closeVhostConnections(t, vhost)
		for i := 0; i < calls; i++ {
			select {
			case err := <-errs:
				require.Error(t, err)
				assert.ErrorIs(t, err, broker.ErrDisconnected)
			case <-time.After(10 * time.Second):
				t.Fatal("a call in flight did not fail within 10s of the connection loss")
			}
		}
		assert.Less(t, time.Since(begin), 15*time.Second, "calls failed long before their 30s deadline")
		close(release)

		// Client and server reconnect and resume by themselves.
		require.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			reply, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("after")})
			return err == nil && string(reply.Body) == "after"
		}, 30*time.Second, 100*time.Millisecond, "no successful call after the connections were dropped")
		require.NoError(t, client.Close())
		require.NoError(t, srv.Close())
	}()
	assert.Contains(t, logs.String(), "amqp: connection lost; reconnecting", "WithLogger receives the broker's reports")
	assert.Contains(t, logs.String(), "amqp: reconnected")
}

// TestRestart restarts a private RabbitMQ node (gracefully, and
// by SIGKILL) while clients send one-way requests in durable mode, and counts
// the requests that RabbitMQ confirmed (Send returned nil) but no server
// ever handled. There must be none. Then it checks that fast mode recovers
// from a restart too.
func TestRestart(t *testing.T) {
	n := startNode(t, nil)
	for _, tc := range []struct {
		name string
		qt   amqp.QueueType
		kill bool
	}{
		{"ClassicGraceful", amqp.ClassicQueue, false},
		{"ClassicKill", amqp.ClassicQueue, true},
		// Not QuorumKill: on RabbitMQ 3.10.8 (Debian 12) a single-node
		// quorum queue declared shortly before the node is SIGKILLed comes
		// back with an empty Raft log, term 0 and no leader (its Ra
		// registration had not reached disk), and every operation on it
		// times out; our client had awaited the confirms. A RabbitMQ
		// limitation, seen with plain amqp091-go too.
		{"QuorumGraceful", amqp.QuorumQueue, false},
	} {
		name, kill := tc.name, tc.kill
		t.Run(name, func(t *testing.T) {
			opts := []amqp.Option{amqp.WithDurable(tc.qt)}
			srv := open(t, n.URL(), opts...)
			client := open(t, n.URL(), opts...)
			subj := "restart-" + broker.NewID()

			var handled sync.Map // ID -> count
			var served, duplicates atomic.Int64
			serve(t, srv, subj, func(_ context.Context, req *broker.Message) (*broker.Message, error) {
				if v, loaded := handled.LoadOrStore(req.ID, new(atomic.Int64)); loaded {
					duplicates.Add(1)
					v.(*atomic.Int64).Add(1)
				}
				served.Add(1)
				time.Sleep(time.Millisecond)
				return nil, nil
			}, broker.WithConcurrency(8))

			var (
				mu       sync.Mutex
				accepted []string
				failed   = map[string]int{}
				next     atomic.Int64
				stop     = make(chan struct{})
				wg       sync.WaitGroup
			)
			const maxSends = 20000
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						i := next.Add(1)
						if i > maxSends {
							return
						}
						id := "req-" + strconv.FormatInt(i, 10)
						ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
						err := client.Send(ctx, &broker.Message{ID: id, Subject: subj, Body: []byte(id)})
						cancel()
						mu.Lock()
						switch {
						case err == nil:
							accepted = append(accepted, id)
						case errors.Is(err, broker.ErrDisconnected):
							failed["disconnected"]++
						case errors.Is(err, broker.ErrTimeout):
							failed["timeout"]++
						default:
							failed[err.Error()]++
						}
						mu.Unlock()
						time.Sleep(5 * time.Millisecond) // keep sending across the whole restart
					}
				}()
			}
			countAccepted := func() int {
				mu.Lock()
				defer mu.Unlock()
				return len(accepted)
			}
			require.Eventually(t, func() bool { return countAccepted() >= 200 }, 30*time.Second, 10*time.Millisecond)
			beforeRestart := countAccepted()
			n.restart(t, kill)
			afterRestart := countAccepted()
			if !assert.Eventually(t, func() bool { return countAccepted() >= afterRestart+200 }, 60*time.Second, 10*time.Millisecond,
				"sending did not resume after the restart") {
				mu.Lock()
				t.Fatalf("accepted %d, refused %v", len(accepted), failed)
				mu.Unlock()
			}
			close(stop)
			wg.Wait()

			missing := func() []string {
				var m []string
				mu.Lock()
				defer mu.Unlock()
				for _, id := range accepted {
					if _, ok := handled.Load(id); !ok {
						m = append(m, id)
					}
				}
				return m
			}
			deadline := time.Now().Add(30 * time.Second)
			for len(missing()) > 0 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			lost := missing()
			mu.Lock()
			t.Logf("restart (%s): sent %d, accepted (confirmed) %d (%d before the restart, %d during it), refused %v; "+
				"served %d, duplicates %d; LOST %d",
				name, next.Load()-1, len(accepted), beforeRestart, afterRestart-beforeRestart, failed,
				served.Load(), duplicates.Load(), len(lost))
			mu.Unlock()
			assert.Empty(t, lost, "confirmed requests never served")

			// Request-reply works again too.
			rsub := "restart-rr-" + broker.NewID()
			serve(t, srv, rsub, echo)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			reply, err := client.Request(ctx, &broker.Message{Subject: rsub, Body: []byte("ok")})
			require.NoError(t, err)
			assert.Equal(t, "ok", string(reply.Body))
		})
	}

	// Fast mode loses its transient queues with the node; servers
	// re-declare them, and calls in flight fail fast, not at their deadline.
	t.Run("Fast", func(t *testing.T) {
		srv := open(t, n.URL())
		client := open(t, n.URL())
		subj := "restart-fast-" + broker.NewID()
		var started atomic.Int64
		serve(t, srv, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if string(req.Body) == "slow" {
				started.Add(1)
				<-ctx.Done()
			}
			return echo(ctx, req)
		})
		errc := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			_, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("slow")})
			errc <- err
		}()
		require.Eventually(t, func() bool { return started.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
		begin := time.Now()
		n.restart(t, false)
		select {
		case err := <-errc:
			assert.ErrorIs(t, err, broker.ErrDisconnected)
		case <-time.After(time.Second):
			t.Fatal("the call in flight did not fail when the node went down")
		}
		t.Logf("node restarted in %v", time.Since(begin).Round(time.Millisecond))
		require.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			reply, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("after")})
			return err == nil && string(reply.Body) == "after"
		}, 30*time.Second, 100*time.Millisecond, "no successful call after the restart")
	})
}

// TestBlocked raises a memory alarm on a private node: RabbitMQ blocks
// publishing connections (connection.blocked). Calls must still end at their
// deadline, saying why, instead of hanging in a socket write, and work again
// once the alarm clears.
func TestBlocked(t *testing.T) {
	n := startNode(t, nil)
	b := open(t, n.URL())
	subj := "blocked-" + broker.NewID()
	serve(t, b, subj, echo)
	_, err := b.Request(ctxT(t, 10*time.Second), &broker.Message{Subject: subj, Body: []byte("before")})
	require.NoError(t, err)

	n.ctl(t, "set_vm_memory_high_watermark", "0")
	var lastErr error
	require.Eventually(t, func() bool {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, lastErr = b.Request(ctx, &broker.Message{Subject: subj, Body: bytes.Repeat([]byte("x"), 1<<20)})
		assert.Less(t, time.Since(start), 2*time.Second, "a call on a blocked connection ends at its deadline")
		return lastErr != nil && strings.Contains(lastErr.Error(), "connection blocked by the broker")
	}, 20*time.Second, 100*time.Millisecond, "no call reported the blocked connection; last error: %v", lastErr)
	assert.ErrorIs(t, lastErr, broker.ErrTimeout)

	n.ctl(t, "set_vm_memory_high_watermark", "0.4")
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := b.Request(ctx, &broker.Message{Subject: subj, Body: []byte("after")})
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "calls did not resume after the alarm cleared")
}

// TestQueueDeletedRecovers: an operator deletes a served queue; RabbitMQ
// cancels the consumer, and the server re-declares the queue and resumes on
// the same connection.
func TestQueueDeletedRecovers(t *testing.T) {
	url := testenv.AMQPURL(t)
	b := open(t, url)
	subj := "deleted-" + broker.NewID()
	serve(t, b, subj, echo)
	_, err := b.Request(ctxT(t, 5*time.Second), &broker.Message{Subject: subj})
	require.NoError(t, err)

	_, ch := rawChannel(t, url)
	_, err = ch.QueueDelete(subj, false, false, false)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := b.Request(ctx, &broker.Message{Subject: subj})
		return err == nil
	}, 20*time.Second, 50*time.Millisecond, "the server did not re-declare its deleted queue")
}

// closeConnectionNamed makes RabbitMQ close the connections whose client
// provided name contains name (a server's and its reply connection), as if
// its process had crashed.
func closeConnectionNamed(t testing.TB, vhost, name string) {
	t.Helper()
	closed := 0
	for _, line := range strings.Split(ctl(t, "list_connections", "-p", vhost, "pid", "client_properties"), "\n") {
		if strings.Contains(line, name) {
			pid := strings.Fields(line)[0]
			ctl(t, "close_connection", pid, "mqrpc test: simulated server crash")
			closed++
		}
	}
	if closed == 0 {
		t.Fatalf("no connection named %q in vhost %s", name, vhost)
	}
}

// TestDurableServerCrash: in durable mode a server that dies while handling
// a request does not lose it: RabbitMQ hands the unacknowledged request to
// another server, whose reply still reaches the waiting caller.
func TestDurableServerCrash(t *testing.T) {
	url, vhost := vhostURL(t)
	opts := []amqp.Option{amqp.WithDurable(amqp.ClassicQueue)}
	subj := "crash-" + broker.NewID()
	crashName := "crashing-server-" + broker.NewID()

	// It comes back late, so the redelivery goes to the healthy server.
	crashing := open(t, url, append(opts, amqp.WithConnectionName(crashName), amqp.WithReconnectBackoff(10*time.Second, 20*time.Second))...)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	serve(t, crashing, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-release // "crashes" before it can answer
		return nil, errors.New("crashed")
	})
	client := open(t, url, opts...)
	type res struct {
		m   *broker.Message
		err error
	}
	resc := make(chan res, 1)
	go func() {
		m, err := client.Request(ctxT(t, 30*time.Second), &broker.Message{ID: "crash-1", Subject: subj, Body: []byte("work")})
		resc <- res{m, err}
	}()
	<-started

	var servedBy atomic.Value
	healthy := open(t, url, opts...)
	serve(t, healthy, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		servedBy.Store(req.ID)
		return echo(ctx, req)
	})
	closeConnectionNamed(t, vhost, crashName)

	select {
	case r := <-resc:
		require.NoError(t, r.err)
		assert.Equal(t, "work", string(r.m.Body))
		assert.Equal(t, "crash-1", servedBy.Load())
	case <-time.After(20 * time.Second):
		t.Fatal("the request of the crashed server was not served by the other one")
	}
}
