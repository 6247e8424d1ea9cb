package amqp

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// pidAddress is a direct reply-to address as RabbitMQ 3.10 makes one
// (rabbit_direct_reply_to:compute_key_and_suffix_v2): the channel's pid
// in the external term format, its node renamed "reply@<hash of the
// node>", then the key.
func pidAddress(node string) string {
	b := append([]byte{131, 88, 118, 0, byte(len(node))}, node...)
	b = append(b, 0, 0, 0x2a, 0x11, 0, 0, 0, 0, 0x65, 0x3c, 0x1f, 0x02) // ID, serial, creation
	return directReplyTo + "." + base64.StdEncoding.EncodeToString(b) + ".oyvwJ9+5nczD2h7KpiJN0Q=="
}

// TestReplyNode pins which reply addresses the replier publishes and which
// it drops because RabbitMQ 3.10 would close the connection decoding them
// (rabbit_direct_reply_to:decode_reply_to_v2). These need no RabbitMQ.
func TestReplyNode(t *testing.T) {
	small := append([]byte{131, 103, 119, 9}, "reply@123"...)
	small = append(small, 0, 0, 0, 1, 0, 0, 0, 0, 3)
	noAt := append([]byte{131, 88, 118, 0, 5}, "reply"...)
	noAt = append(noAt, make([]byte, 12)...)
	short := append([]byte{131, 88, 118, 0, 9}, "reply@123"...)
	short = append(short, 0, 0, 0, 1)
	enc := base64.StdEncoding.EncodeToString
	tests := []struct {
		key          string
		hash         int64
		direct, ok   bool
		whyPublished string
	}{
		{key: "calc", ok: true, whyPublished: "a queue name: routed or dropped"},
		{key: directReplyTo, ok: true, whyPublished: "a queue name that is never declared"},
		{key: directReplyTo + ".bogus", ok: true, whyPublished: "one part: RabbitMQ drops it"},
		{key: directReplyTo + ".a.b.c", ok: true, whyPublished: "three parts: RabbitMQ drops it"},
		{key: directReplyTo + "..a..", ok: true, whyPublished: "one part once the empty ones are left out"},
		{key: pidAddress("reply@98342201"), hash: 98342201, direct: true, ok: true},
		{key: pidAddress("reply@-7"), hash: -7, direct: true, ok: true},
		{key: pidAddress("reply@98342201") + ".", hash: 98342201, direct: true, ok: true},
		{key: directReplyTo + "." + enc(small) + ".k", hash: 123, direct: true, ok: true},
		{key: directReplyTo + ".garbage.key"},                    // not base64 (no padding)
		{key: directReplyTo + "." + enc([]byte("pid")) + ".k"},   // not a pid
		{key: directReplyTo + "." + enc(noAt) + ".k"},            // no @: RabbitMQ takes its own host name
		{key: pidAddress("reply@host")},                          // not a number
		{key: directReplyTo + "." + enc(short) + ".k"},           // truncated
		{key: directReplyTo + ".\xff\xfe.k"},                     // not UTF-8
		{key: pidAddress("reply@99999999999999999999999999999")}, // beyond any hash
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			hash, direct, ok := replyNode(tt.key)
			assert.Equal(t, tt.ok, ok, "ok")
			assert.Equal(t, tt.direct, direct, "direct")
			assert.Equal(t, tt.hash, hash, "hash")
		})
	}
}

func BenchmarkReplyNode(b *testing.B) {
	key := pidAddress("reply@98342201")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		replyNode(key)
	}
}

// FuzzReplyNode: replyNode reads reply_to as any client sets it, so it
// must never panic, and its answers must agree: a direct address has a
// hash and is published, anything else has none.
func FuzzReplyNode(f *testing.F) {
	for _, key := range []string{
		"calc", directReplyTo, directReplyTo + ".bogus", directReplyTo + ".a.b.c",
		directReplyTo + ".garbage.key", directReplyTo + ".\xff\xfe.k",
		pidAddress("reply@98342201"), pidAddress("reply@-7"), pidAddress("reply@host"),
		pidAddress("reply@99999999999999999999999999999"),
		directReplyTo + "." + base64.StdEncoding.EncodeToString([]byte{131, 103, 119, 9}) + ".k",
	} {
		f.Add(key)
	}
	f.Fuzz(func(t *testing.T, key string) {
		hash, direct, ok := replyNode(key)
		if direct && !ok {
			t.Fatalf("replyNode(%q): direct but not ok", key)
		}
		if !direct && hash != 0 {
			t.Fatalf("replyNode(%q): hash %d of an address that is not direct", key, hash)
		}
		if !strings.HasPrefix(key, directReplyTo+".") && (!ok || direct) {
			t.Fatalf("replyNode(%q) = %v, %v: not a direct reply-to address, so published as a queue name", key, direct, ok)
		}
	})
}
