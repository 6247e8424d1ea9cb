package stream

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
)

func encodeAll(msgs []*broker.Message) []byte {
	size := 0
	for _, m := range msgs {
		size += batchSize(m)
	}
	b := make([]byte, 0, size)
	for _, m := range msgs {
		b = appendBatch(b, m)
	}
	if len(b) != size {
		panic("batchSize disagrees with appendBatch")
	}
	return b
}

func requireSameMessages(t *testing.T, want, got []*broker.Message) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, string(want[i].Body), string(got[i].Body), "message %d", i)
		require.Equal(t, len(want[i].Header), len(got[i].Header), "message %d", i)
		for k, v := range want[i].Header {
			require.Equal(t, v, got[i].Header[k], "message %d header %s", i, k)
		}
	}
}

// TestBatchRoundTrip: messages with and without headers, empty and large
// bodies come out of a batch as they went in, and appending to a
// decoded body never overwrites the next message.
func TestBatchRoundTrip(t *testing.T) {
	msgs := []*broker.Message{
		{Body: []byte("a")},
		{Header: broker.Header{"x-a": "1", "x-empty": ""}, Body: []byte("bb")},
		{},
		{Header: broker.Header{"x-big": string(make([]byte, 300))}, Body: make([]byte, 70_000)},
	}
	queued := &broker.Message{Body: []byte("queued")}
	got, err := decodeBatch([]*broker.Message{queued}, encodeAll(msgs))
	require.NoError(t, err)
	require.Same(t, queued, got[0], "decodeBatch appends to what is queued")
	got = got[1:]
	requireSameMessages(t, msgs, got)
	_ = append(got[0].Body, "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"...) // past message 1's headers
	require.Equal(t, "bb", string(got[1].Body))
}

func TestBatchMalformed(t *testing.T) {
	full := encodeAll([]*broker.Message{{Header: broker.Header{"k": "v"}, Body: []byte("body")}})
	queued := []*broker.Message{{Body: []byte("queued")}}
	for n := 0; n < len(full); n++ {
		got, err := decodeBatch(queued, full[:n])
		require.Error(t, err, "truncated to %d bytes", n)
		require.Len(t, got, 1, "a malformed frame adds nothing to what is queued")
	}
	// A frame whose first message is whole and second truncated adds
	// neither.
	two := append(append([]byte(nil), full...), full[:len(full)-1]...)
	got, err := decodeBatch(queued, two)
	require.Error(t, err)
	require.Len(t, got, 1)
	_, err = decodeBatch(nil, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	require.Error(t, err)
}

// FuzzDecodeBatch: any body either fails with an error or yields messages
// that encode and decode to themselves; nothing panics.
func FuzzDecodeBatch(f *testing.F) {
	f.Add(encodeAll([]*broker.Message{{Body: []byte("a")}, {Header: broker.Header{"x": "y"}}}))
	f.Add([]byte{})
	f.Add([]byte{1, 1, 'k'})
	f.Add([]byte{1, 1, 'K', 1, 'v', 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		msgs, err := decodeBatch(nil, body)
		if err != nil {
			return
		}
		require.NotEmpty(t, msgs)
		again, err := decodeBatch(nil, encodeAll(msgs))
		require.NoError(t, err)
		requireSameMessages(t, msgs, again)
	})
}
