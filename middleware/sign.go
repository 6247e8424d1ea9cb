package middleware

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"time"

	"github.com/mqrpc/mqrpc/broker"
	"github.com/mqrpc/mqrpc/rpc"
)

// Header names used by HMAC signing.
const (
	// HeaderSignature carries "<key id>:<base64 HMAC-SHA256>".
	HeaderSignature = "mqrpc-signature"
	// HeaderSignedAt carries the signing time, Unix milliseconds.
	HeaderSignedAt = "mqrpc-signed-at"
)

// ErrBadSignature is wrapped by the errors of a request or reply whose
// signature is missing, unknown, stale or wrong.
var ErrBadSignature = errors.New("middleware: bad signature")

// HMACSigner signs and verifies requests and replies with HMAC-SHA256, so a
// server on a shared bus rejects forged or altered requests and a client
// rejects forged replies.
//
// A request's signature covers its subject, message ID, method,
// content-type, deadline, signing time and body; a reply's covers the ID of
// the request it answers, its status, status message, content-type,
// signing time and body, so a reply cannot be replayed to another call.
// Other headers are not covered. A signature older than the allowed clock
// skew is refused; pair the server side with Dedup to refuse replays of a
// message ID within that window too.
//
// Signing must see the message as the broker sends it: put the client
// middleware innermost (last), after routing changed the subject, and the
// server middleware outermost (first). An HMACSigner is safe for
// concurrent use.
type HMACSigner struct {
	keyID   string
	keys    map[string][]byte
	maxSkew time.Duration
	now     func() time.Time
}

// HMACOption configures an HMACSigner.
type HMACOption func(*HMACSigner)

// WithVerifyKey adds a key accepted when verifying (but not used to sign),
// for key rotation: deploy the new key as a verify key everywhere first,
// then switch signers to it.
func WithVerifyKey(keyID string, key []byte) HMACOption {
	return func(s *HMACSigner) { s.keys[keyID] = key }
}

// WithMaxSkew sets how old (or how far in the future) a signature may be.
// Default 5 minutes.
func WithMaxSkew(d time.Duration) HMACOption { return func(s *HMACSigner) { s.maxSkew = d } }

// WithSignClock sets the clock, for tests. Default time.Now.
func WithSignClock(now func() time.Time) HMACOption { return func(s *HMACSigner) { s.now = now } }

// NewHMACSigner returns a signer that signs with key, named keyID (the ID
// travels with the signature and picks the key on the other side). Use
// at least 32 random bytes.
func NewHMACSigner(keyID string, key []byte, opts ...HMACOption) *HMACSigner {
	s := &HMACSigner{keyID: keyID, keys: map[string][]byte{keyID: key}, maxSkew: 5 * time.Minute, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Client returns the client middleware: it signs each request and verifies
// each reply (a bad reply fails the call with Unauthenticated).
func (s *HMACSigner) Client() rpc.Middleware {
	return rpc.ClientOnly("middleware.HMACSigner.Client", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			if req.ID == "" {
				req.ID = broker.NewID()
			}
			s.sign(req, requestFields(req))
			reply, err := next.ServeMessage(ctx, req)
			if reply == nil {
				return reply, err
			}
			if verr := s.verify(reply, replyFields(req.ID, reply)); verr != nil {
				return nil, rpc.NewError(rpc.Unauthenticated, fmt.Errorf("reply to %s: %w", req.ID, verr))
			}
			return reply, err
		})
	})
}

// Server returns the server middleware: it refuses a request with a bad
// signature with Unauthenticated, before anything else runs, and signs
// every reply (error replies included).
func (s *HMACSigner) Server() rpc.Middleware {
	return rpc.ServerOnly("middleware.HMACSigner.Server", func(next broker.Handler) broker.Handler {
		return broker.HandlerFunc(func(ctx context.Context, req *broker.Message) (*broker.Message, error) {
			var reply *broker.Message
			if err := s.verify(req, requestFields(req)); err != nil {
				reply = rpc.ErrorReply(rpc.NewError(rpc.Unauthenticated, err))
			} else {
				var err error
				reply, err = next.ServeMessage(ctx, req)
				if err != nil {
					var rerr *rpc.Error
					if !errors.As(err, &rerr) {
						return nil, err // a delivery failure: nothing to sign
					}
					reply = rpc.ErrorReply(rerr)
				}
			}
			if reply != nil {
				s.sign(reply, replyFields(req.ID, reply))
			}
			return reply, nil
		})
	})
}

func requestFields(m *broker.Message) []string {
	var deadline string
	if !m.Deadline.IsZero() {
		deadline = broker.FormatDeadline(m.Deadline)
	}
	return []string{"request", m.Subject, m.ID, m.Header.Get(broker.HeaderMethod),
		m.Header.Get(broker.HeaderContentType), deadline}
}

func replyFields(requestID string, m *broker.Message) []string {
	return []string{"reply", requestID, m.Header.Get(broker.HeaderStatus),
		m.Header.Get(broker.HeaderStatusMessage), m.Header.Get(broker.HeaderContentType)}
}

func (s *HMACSigner) sign(m *broker.Message, fields []string) {
	at := strconv.FormatInt(s.now().UnixMilli(), 10)
	mac := s.mac(s.keys[s.keyID], fields, at, m.Body)
	m.SetHeader(HeaderSignedAt, at)
	m.SetHeader(HeaderSignature, s.keyID+":"+base64.RawStdEncoding.EncodeToString(mac))
}

func (s *HMACSigner) verify(m *broker.Message, fields []string) error {
	sig := m.Header.Get(HeaderSignature)
	if sig == "" {
		return fmt.Errorf("%w: no %s header", ErrBadSignature, HeaderSignature)
	}
	keyID, b64, ok := strings.Cut(sig, ":")
	key, known := s.keys[keyID]
	if !ok || !known {
		return fmt.Errorf("%w: unknown key %q", ErrBadSignature, keyID)
	}
	got, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Errorf("%w: malformed signature", ErrBadSignature)
	}
	at := m.Header.Get(HeaderSignedAt)
	ms, err := strconv.ParseInt(at, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: malformed %s header", ErrBadSignature, HeaderSignedAt)
	}
	if skew := s.now().Sub(time.UnixMilli(ms)); skew > s.maxSkew || skew < -s.maxSkew {
		return fmt.Errorf("%w: signed %v away from now, more than the allowed %v", ErrBadSignature, skew.Round(time.Second), s.maxSkew)
	}
	if !hmac.Equal(got, s.mac(key, fields, at, m.Body)) {
		return fmt.Errorf("%w: signature does not match the message", ErrBadSignature)
	}
	return nil
}

// mac computes the HMAC over length-prefixed fields, so no two different
// messages have the same canonical form.
func (s *HMACSigner) mac(key []byte, fields []string, at string, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	writeField(h, []byte("mqrpc-hmac-v1"))
	for _, f := range fields {
		writeField(h, []byte(f))
	}
	writeField(h, []byte(at))
	writeField(h, body)
	return h.Sum(nil)
}

func writeField(h hash.Hash, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}
