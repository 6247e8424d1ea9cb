package msgpool

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mqrpc/mqrpc/broker"
)

func TestPutClears(t *testing.T) {
	m := Get()
	m.ID, m.Subject, m.Body, m.Deadline = "id", "s", []byte("b"), time.Now()
	if m.Header == nil {
		m.Header = make(broker.Header)
	}
	m.Header["x-a"] = "1"
	h := m.Header
	Put(m)
	assert.Equal(t, broker.Message{Header: h}, *m, "everything but the (emptied) header map is reset")
	assert.Empty(t, h)

	big := &broker.Message{Header: make(broker.Header)}
	for i := range maxKeptHeader + 1 {
		big.Header[string(rune('a'+i))] = "v"
	}
	Put(big)
	assert.Nil(t, big.Header, "an unusually large header map is not kept")
}
