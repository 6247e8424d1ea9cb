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
