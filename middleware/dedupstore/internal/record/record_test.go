package record

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
)

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		reply *broker.Message
	}{
		{name: "one-way", reply: nil},
		{name: "empty", reply: &broker.Message{}},
		{name: "body", reply: &broker.Message{Body: []byte("body")}},
		{name: "headers", reply: &broker.Message{Header: broker.Header{"a": "1", "": "", "b": "x\x00y"}, Body: []byte{0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, err := Parse(Outcome(tt.reply))
			require.NoError(t, err)
			assert.False(t, rec.Claim)
			if tt.reply == nil {
				assert.Nil(t, rec.Reply)
				return
			}
			require.NotNil(t, rec.Reply)
			assert.Equal(t, tt.reply.Header, rec.Reply.Header)
			assert.Equal(t, string(tt.reply.Body), string(rec.Reply.Body))
		})
	}
	rec, err := Parse(Claim("tok", 1500*time.Millisecond))
	require.NoError(t, err)
	assert.Equal(t, Record{Claim: true, Token: "tok", Lease: 1500 * time.Millisecond}, rec)
}

func TestBad(t *testing.T) {
	for _, b := range []string{"", "x", "c", "o", "o\x05", "o\x01\x05ab", "o\x01\x01a\x09"} {
		_, err := Parse([]byte(b))
		assert.Error(t, err, "%q", b)
	}
}

// FuzzParse: any bytes give a record or an error, never a panic, and an
// outcome re-encodes to a value that parses the same.
func FuzzParse(f *testing.F) {
	f.Add(Outcome(&broker.Message{Header: broker.Header{"a": "b"}, Body: []byte("c")}))
	f.Add(Outcome(nil))
	f.Add(Claim("t", time.Second))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := Parse(b)
		if err != nil || rec.Claim {
			return
		}
		again, err := Parse(Outcome(rec.Reply))
		require.NoError(t, err)
		assert.Equal(t, rec, again)
	})
}
