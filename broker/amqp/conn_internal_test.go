package amqp

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests need no RabbitMQ: they pin batchConn's contract on a loopback
// TCP connection or a pipe.

// tcpPair returns the two ends of a loopback TCP connection, the first
// wrapped in a batchConn.
func tcpPair(t *testing.T) (*batchConn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := batchDial(func(network, addr string) (net.Conn, error) {
		return net.Dial(network, addr)
	})("tcp", l.Addr().String())
	require.NoError(t, err)
	peer := <-accepted
	require.NotNil(t, peer)
	t.Cleanup(func() { _ = c.Close(); _ = peer.Close() })
	return c.(*batchConn), peer
}

// Bytes written by several goroutines, one Write at a time as amqp091-go
// does (under its send lock), arrive whole and in Write order, whatever
// their sizes, direct writes included.
func TestBatchConnOrder(t *testing.T) {
	c, peer := tcpPair(t)
	var (
		lock sync.Mutex // amqp091-go's send lock
		sent bytes.Buffer
		wg   sync.WaitGroup
	)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 200 {
				n := 1 + r.IntN(5000)
				if i%50 == 0 {
					n = directWrite + r.IntN(directWrite)
				}
				p := bytes.Repeat([]byte{byte(g*31 + i)}, n)
				lock.Lock()
				sent.Write(p)
				_, err := c.Write(p)
				lock.Unlock()
				if !assert.NoError(t, err) {
					return
				}
			}
		}()
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	wg.Wait()
	require.NoError(t, c.Close())
	select {
	case b := <-got:
		require.True(t, bytes.Equal(sent.Bytes(), b), "sent %d bytes, received %d, or in another order", sent.Len(), len(b))
	case <-time.After(10 * time.Second):
		t.Fatal("peer did not receive everything")
	}
}

// A peer that stops reading blocks the writer once maxPending bytes wait
// besides those being written; reading again releases it.
func TestBatchConnBackpressure(t *testing.T) {
	end, peer := net.Pipe() // unbuffered: nothing is written until read
	c := newBatchConn(end)
	t.Cleanup(func() { _ = c.Close(); _ = peer.Close() })
	chunk := make([]byte, 4096)
	returned := make(chan int, 1)
	go func() {
		n := 0
		for n < 4*maxPending {
			if _, err := c.Write(chunk); err != nil {
				break
			}
			n += len(chunk)
		}
		returned <- n
	}()
	select {
	case n := <-returned:
		t.Fatalf("%d bytes written to a peer that reads nothing", n)
	case <-time.After(200 * time.Millisecond):
	}
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	select {
	case n := <-returned:
		assert.Equal(t, 4*maxPending, n)
	case <-time.After(5 * time.Second):
		t.Fatal("writer still blocked after the peer read")
	}
}

// A failed write closes the connection (so a reader of it fails at once)
// and fails the Writes after it.
func TestBatchConnWriteError(t *testing.T) {
	end, peer := net.Pipe()
	c := newBatchConn(end)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, peer.Close())
	_, err := c.Write([]byte("frame"))
	require.NoError(t, err, "the first write only queues")
	require.Eventually(t, func() bool {
		_, err := c.Write([]byte("frame"))
		return err != nil
	}, 5*time.Second, time.Millisecond)
	_, err = c.Read(make([]byte, 1))
	assert.True(t, errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF), "read after a failed write: %v", err)
}

// Close writes what is queued before closing (amqp091-go closes right
// after queueing a connection.close-ok), and Writes after Close fail.
func TestBatchConnCloseFlushes(t *testing.T) {
	c, peer := tcpPair(t)
	payload := bytes.Repeat([]byte("x"), 100_000)
	for i := 0; i < len(payload); i += 1000 {
		_, err := c.Write(payload[i : i+1000])
		require.NoError(t, err)
	}
	require.NoError(t, c.Close())
	b, err := io.ReadAll(peer)
	require.NoError(t, err)
	assert.Equal(t, len(payload), len(b))
	_, err = c.Write([]byte("late"))
	assert.ErrorIs(t, err, net.ErrClosed)
}

// Close of a connection whose peer reads nothing gives up on the queued
// bytes after closeFlushTimeout instead of hanging.
func TestBatchConnCloseStuck(t *testing.T) {
	end, peer := net.Pipe()
	c := newBatchConn(end)
	t.Cleanup(func() { _ = peer.Close() })
	_, err := c.Write([]byte("never read"))
	require.NoError(t, err)
	start := time.Now()
	_ = c.Close()
	assert.Less(t, time.Since(start), closeFlushTimeout+time.Second)
}
