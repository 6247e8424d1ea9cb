package thrift

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strings"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/mqrpc/mqrpc/codec"
)

// Protocol is a Thrift wire protocol. The zero value is Binary.
type Protocol int

// The supported protocols.
const (
	// Binary is TBinaryProtocol (strict).
	Binary Protocol = iota
	// Compact is TCompactProtocol.
	Compact
	// JSON is TJSONProtocol (not TSimpleJSONProtocol, which cannot be read
	// back).
	JSON
)

// Content types naming each protocol in the content-type header. They are
// the media types registered for Thrift with IANA.
const (
	ContentTypeBinary  = "application/vnd.apache.thrift.binary"
	ContentTypeCompact = "application/vnd.apache.thrift.compact"
	ContentTypeJSON    = "application/vnd.apache.thrift.json"
)

// String returns "binary", "compact" or "json".
func (p Protocol) String() string {
	switch p {
	case Binary:
		return "binary"
	case Compact:
		return "compact"
	case JSON:
		return "json"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// ContentType returns the media type of p, such as
// "application/vnd.apache.thrift.binary".
func (p Protocol) ContentType() string {
	switch p {
	case Compact:
		return ContentTypeCompact
	case JSON:
		return ContentTypeJSON
	}
	return ContentTypeBinary
}

// Factory returns the thrift protocol factory of p. cfg may be nil for
// Thrift's defaults; the JSON protocol ignores it.
func (p Protocol) Factory(cfg *thrift.TConfiguration) thrift.TProtocolFactory {
	switch p {
	case Compact:
		return thrift.NewTCompactProtocolFactoryConf(cfg)
	case JSON:
		return thrift.NewTJSONProtocolFactory()
	}
	return thrift.NewTBinaryProtocolFactoryConf(cfg)
}

func (p Protocol) valid() bool { return p >= Binary && p <= JSON }

// ProtocolOf returns the protocol named by a content-type header value
// (parameters are ignored, case does not matter). It reports false for
// anything else.
func ProtocolOf(contentType string) (Protocol, bool) {
	switch strings.ToLower(codec.MediaType(contentType)) {
	case ContentTypeBinary, "application/x-thrift", "application/x-thrift-binary":
		return Binary, true
	case ContentTypeCompact, "application/x-thrift-compact":
		return Compact, true
	case ContentTypeJSON, "application/x-thrift-json":
		return JSON, true
	}
	return 0, false
}

// sniff guesses the protocol from the first byte of a message: strict
// binary messages start with 0x80 (version 1), compact ones with 0x82
// (protocol id), JSON ones with '['.
func sniff(body []byte) (Protocol, bool) {
	if len(body) == 0 {
		return 0, false
	}
	switch body[0] {
	case 0x80:
		return Binary, true
	case 0x82:
		return Compact, true
	case '[':
		return JSON, true
	}
	return 0, false
}

// readBuffer returns a transport reading body without copying it.
func readBuffer(body []byte) *thrift.TMemoryBuffer {
	return &thrift.TMemoryBuffer{Buffer: bytes.NewBuffer(body)}
}

// readProtocol returns a protocol reading body, whose size limit is lowered
// to the size of body: a list, set, map or string cannot have more elements
// than its message has bytes, so a small hostile message cannot make the
// reader allocate much.
func readProtocol(pf thrift.TProtocolFactory, tconf *thrift.TConfiguration, body []byte) thrift.TProtocol {
	prot := pf.GetProtocol(readBuffer(body))
	limit := int32(math.MaxInt32)
	if len(body) < math.MaxInt32 {
		limit = int32(max(len(body), 1))
	}
	if limit < tconf.GetMaxMessageSize() {
		var c thrift.TConfiguration
		if tconf != nil {
			c = *tconf
		}
		c.MaxMessageSize = limit
		thrift.PropagateTConfiguration(prot, &c)
	}
	return prot
}

// messageHeader is the start of a Thrift message.
type messageHeader struct {
	name string
	typ  thrift.TMessageType
	seq  int32
}

// peek reads the message header of body with pf, leaving body untouched.
func peek(ctx context.Context, pf thrift.TProtocolFactory, tconf *thrift.TConfiguration, body []byte) (messageHeader, error) {
	name, typ, seq, err := readProtocol(pf, tconf, body).ReadMessageBegin(ctx)
	if err != nil {
		return messageHeader{}, err
	}
	if typ < thrift.CALL || typ > thrift.ONEWAY {
		return messageHeader{}, thrift.NewTProtocolExceptionWithType(thrift.INVALID_DATA,
			fmt.Errorf("invalid message type %d", typ))
	}
	return messageHeader{name: name, typ: typ, seq: seq}, nil
}
