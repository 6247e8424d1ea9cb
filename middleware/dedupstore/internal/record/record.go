// Package record encodes what the shared dedup stores keep under a key:
// a claim of a run in progress, or the outcome of a finished request.
//
// A claim is 'c', its lease in milliseconds (uvarint) and its token. An
// outcome is 'n' for a request that needed no reply, or 'o', the number
// of reply headers (uvarint), each name and value (uvarint length, bytes),
// then the body, to the end.
package record

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mqrpc/mqrpc/broker"
)

const (
	tagClaim   = 'c'
	tagOutcome = 'o'
	tagNoReply = 'n'
)

// Record is a decoded claim or outcome.
type Record struct {
	// Claim reports a claim, with its Token and Lease; otherwise Reply is
	// the outcome (nil for a request that needed no reply).
	Claim bool
	Token string
	Lease time.Duration
	Reply *broker.Message
}

// Claim encodes a claim.
func Claim(token string, lease time.Duration) []byte {
	b := append(make([]byte, 0, 1+binary.MaxVarintLen64+len(token)), tagClaim)
	b = binary.AppendUvarint(b, uint64(lease.Milliseconds()))
	return append(b, token...)
}

// Outcome encodes an outcome: its header and body.
func Outcome(reply *broker.Message) []byte {
	if reply == nil {
		return []byte{tagNoReply}
	}
	n := 1 + binary.MaxVarintLen64 + len(reply.Body)
	for k, v := range reply.Header {
		n += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	b := append(make([]byte, 0, n), tagOutcome)
	b = binary.AppendUvarint(b, uint64(len(reply.Header)))
	for k, v := range reply.Header {
		b = appendString(b, k)
		b = appendString(b, v)
	}
	return append(b, reply.Body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

var errShort = errors.New("truncated")

// Parse decodes a claim or an outcome. The outcome's body does not alias b.
func Parse(b []byte) (Record, error) {
	if len(b) == 0 {
		return Record{}, errors.New("record: empty value")
	}
	switch b[0] {
	case tagClaim:
		ms, n := binary.Uvarint(b[1:])
		if n <= 0 {
			return Record{}, fmt.Errorf("record: claim: %w", errShort)
		}
		return Record{Claim: true, Lease: time.Duration(ms) * time.Millisecond, Token: string(b[1+n:])}, nil
	case tagNoReply:
		return Record{}, nil
	case tagOutcome:
		rest := b[1:]
		count, n := binary.Uvarint(rest)
		if n <= 0 || count > uint64(len(rest)) {
			return Record{}, fmt.Errorf("record: outcome header count: %w", errShort)
		}
		rest = rest[n:]
		msg := &broker.Message{}
		if count > 0 {
			msg.Header = make(broker.Header, count)
		}
		for range count {
			var k, v string
			var err error
			if k, rest, err = cutString(rest); err != nil {
				return Record{}, fmt.Errorf("record: outcome header name: %w", err)
			}
			if v, rest, err = cutString(rest); err != nil {
				return Record{}, fmt.Errorf("record: outcome header %q: %w", k, err)
			}
			msg.Header[k] = v
		}
		if len(rest) > 0 {
			msg.Body = append([]byte(nil), rest...)
		}
		return Record{Reply: msg}, nil
	}
	return Record{}, fmt.Errorf("record: unknown tag %q: not a dedup record", b[0])
}

func cutString(b []byte) (string, []byte, error) {
	l, n := binary.Uvarint(b)
	if n <= 0 || l > uint64(len(b)-n) {
		return "", nil, errShort
	}
	return string(b[n : n+int(l)]), b[n+int(l):], nil
}
