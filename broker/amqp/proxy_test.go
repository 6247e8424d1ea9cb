package amqp_test

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/broker/amqp"
	"github.com/mqrpc/mqrpc/internal/testenv"
)

// blackholeProxy is a loopback TCP proxy that can make its current
// connections go silent without closing them, as a dead network path or a
// frozen peer does: nothing is delivered and no FIN or RST arrives.
type blackholeProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*proxyConn
	// hang makes new connections hang: accepted, never answered, as a
	// host that is down behind a load balancer or a frozen node.
	hang atomic.Bool
}

type proxyConn struct {
	client, server net.Conn
	silent         atomic.Bool
}

func newBlackholeProxy(t testing.TB, target string) *blackholeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &blackholeProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *blackholeProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.hang.Load() {
			p.mu.Lock()
			p.conns = append(p.conns, &proxyConn{client: c, server: c})
			p.mu.Unlock()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxyConn{client: c, server: s}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(pc, c, s)
		go p.pipe(pc, s, c)
	}
}

// pipe copies src to dst until src fails; once the connection is silent it
// keeps reading and drops everything.
func (p *blackholeProxy) pipe(pc *proxyConn, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pc.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				_ = dst.Close()
			}
			return
		}
	}
}

// silence makes every current connection go silent; new ones work.
func (p *blackholeProxy) silence() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pc := range p.conns {
		pc.silent.Store(true)
	}
}

// die drops every current connection (RST) and makes new ones hang.
func (p *blackholeProxy) die() {
	p.hang.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pc := range p.conns {
		if tc, ok := pc.client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = pc.client.Close()
		_ = pc.server.Close()
	}
}

func (p *blackholeProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for _, pc := range p.conns {
		_ = pc.client.Close()
		_ = pc.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestSilentConnectionLoss: the network path to RabbitMQ goes silent (no
// FIN, no RST). The heartbeat notices, calls in flight fail with
// ErrDisconnected well before their deadline, and the client reconnects.
func TestSilentConnectionLoss(t *testing.T) {
	base := testenv.AMQPURL(t)
	u, err := url.Parse(base)
	require.NoError(t, err)
	proxy := newBlackholeProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()

	srv := open(t, base)
	client := open(t, u.String(), amqp.WithHeartbeat(time.Second))
	subj := "silent-" + broker.NewID()
	started := make(chan struct{}, 1)
	serve(t, srv, subj, func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
		if string(req.Body) == "slow" {
			started <- struct{}{}
			select {
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
			}
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
	<-started
	begin := time.Now()
	proxy.silence()
	select {
	case err := <-errc:
		assert.ErrorIs(t, err, broker.ErrDisconnected)
		t.Logf("call failed %v after the path went silent (heartbeat 1s)", time.Since(begin).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("a call over a silent connection did not fail within 15s")
	}
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("after")})
		return err == nil
	}, 30*time.Second, 100*time.Millisecond, "the client did not reconnect after the silent loss")
}

// TestFailoverSkipsLostNode: the client, given two nodes, is connected to
// the first when it dies in a way that makes new connections hang (its
// host gone, not just its process). The reconnect goes to the second node
// first, so calls succeed again at once instead of after a dial timeout
// spent on the dead node.
func TestFailoverSkipsLostNode(t *testing.T) {
	base := testenv.AMQPURL(t)
	u, err := url.Parse(base)
	require.NoError(t, err)
	dead, alive := newBlackholeProxy(t, u.Host), newBlackholeProxy(t, u.Host)
	urlVia := func(p *blackholeProxy) string {
		v := *u
		v.Host = p.ln.Addr().String()
		return v.String()
	}

	srv := open(t, base)
	client := open(t, urlVia(dead)+","+urlVia(alive), amqp.WithDialTimeout(10*time.Second))
	subj := "failover-" + broker.NewID()
	serve(t, srv, subj, echo)
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := client.Request(ctx, &broker.Message{Subject: subj, Body: []byte("x")})
		return err
	}
	require.NoError(t, call(), "a call through the first node")
	dead.mu.Lock()
	onDead := len(dead.conns)
	dead.mu.Unlock()
	require.Positive(t, onDead, "the client connected to the first node")

	begin := time.Now()
	dead.die()
	for call() != nil {
		require.Less(t, time.Since(begin), 5*time.Second,
			"no call succeeded within 5s of the node's death (the dial timeout is 10s)")
		time.Sleep(20 * time.Millisecond) // poll interval of a bounded wait
	}
	t.Logf("calls succeed again %v after the node died", time.Since(begin).Round(time.Millisecond))
}
