package amqp

import (
	"net"
	"sync"
	"time"
)

// batchConn is a connection to RabbitMQ whose writes are batched behind the
// writer.
//
// amqp091-go writes every frame group (a publish, an ack) with its own write
// system call, holding a connection-wide lock meanwhile, so under load the
// publishers and handlers of a connection queue on that lock and each pays a
// system call, and RabbitMQ reads as many small segments. A batchConn's
// Write copies the bytes into a buffer and returns at once; one goroutine,
// started when the buffer fills from empty and ending when it is empty
// again, writes it out, so whatever accumulates during one system call goes
// out in the next. The bytes leave in the order they were written.
//
// Backpressure is kept: a Write waits while maxPending bytes wait to be
// written, so a connection RabbitMQ stops reading (a memory or disk alarm)
// still blocks its publishers. Writes of directWrite bytes or more are not
// copied: they wait for the buffer to drain and are written by the caller.
// A failed write closes the connection, so amqp091-go's reader fails and
// the connection is torn down as after any network error; later Writes
// return the error.
type batchConn struct {
	net.Conn

	mu      sync.Mutex
	drained sync.Cond // signalled when the writer is idle and buf empty
	buf     []byte    // written by nobody yet
	spare   []byte    // the previous buffer, for reuse
	writing bool      // a goroutine is writing (or about to)
	err     error     // the first write error, or net.ErrClosed after Close
}

const (
	// maxPending bounds the bytes a batchConn holds before Write blocks.
	maxPending = 256 << 10
	// directWrite is the size from which a Write is not copied.
	directWrite = 64 << 10
	// closeFlushTimeout bounds how long Close waits for buffered bytes (a
	// connection.close-ok, say) to be written.
	closeFlushTimeout = time.Second
)

func newBatchConn(c net.Conn) *batchConn {
	bc := &batchConn{Conn: c}
	bc.drained.L = &bc.mu
	return bc
}

// batchDial wraps the connections dial makes in a batchConn.
func batchDial(dial func(network, addr string) (net.Conn, error)) func(network, addr string) (net.Conn, error) {
	return func(network, addr string) (net.Conn, error) {
		c, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		return newBatchConn(c), nil
	}
}

// Write queues p to be written and returns len(p), or the error of an
// earlier write. amqp091-go reuses p once Write returns, so p is copied.
func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if len(p) >= directWrite {
		for c.err == nil && (c.writing || len(c.buf) > 0) {
			c.drained.Wait()
		}
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return 0, err
		}
		c.writing = true
		c.mu.Unlock()
		n, err := c.Conn.Write(p)
		c.mu.Lock()
		c.wrote(err)
		if len(c.buf) > 0 && c.err == nil {
			go c.flush() // bytes queued meanwhile; c.writing stays true
		} else {
			c.writing = false
			c.drained.Broadcast()
		}
		c.mu.Unlock()
		return n, err
	}
	for c.err == nil && len(c.buf) >= maxPending {
		c.drained.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.buf = append(c.buf, p...)
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		go c.flush()
	}
	return len(p), nil
}

// flush writes the buffer until it stays empty.
func (c *batchConn) flush() {
	c.mu.Lock()
	for len(c.buf) > 0 && c.err == nil {
		b := c.buf
		c.buf, c.spare = c.spare[:0], nil
		c.drained.Broadcast() // room for Writes waiting on maxPending
		c.mu.Unlock()
		_, err := c.Conn.Write(b)
		c.mu.Lock()
		c.spare = b[:0]
		c.wrote(err)
	}
	c.writing = false
	c.drained.Broadcast()
	c.mu.Unlock()
}

// wrote records the outcome of a write; c.mu is held. The first error
// closes the connection, which ends amqp091-go's reader.
func (c *batchConn) wrote(err error) {
	if err != nil && c.err == nil {
		c.err = err
		c.buf = nil
		_ = c.Conn.Close()
	}
}

// Close writes what is buffered, waiting at most closeFlushTimeout, and
// closes the connection.
func (c *batchConn) Close() error {
	c.mu.Lock()
	if c.writing && c.err == nil {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		for c.writing {
			c.drained.Wait()
		}
	}
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.buf, c.spare = nil, nil
	c.drained.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}
