// Package codec is the protocol layer of mqrpc: it turns values into bytes
// and back. A codec knows nothing of brokers.
//
// A codec's Name is a media type, carried in the content-type header of
// every message, so the receiving side can pick the same codec. Packages
// codec/json, codec/msgpack and codec/proto provide the standard ones; any
// type with these three methods plugs in; one that also implements
// [Appender] lets streams encode each message into a reused buffer.
package codec

import (
	"errors"
	"fmt"
	"strings"
)

// Codec marshals and unmarshals message bodies.
//
// Implementations must be safe for concurrent use. Marshal must not retain
// v, and Unmarshal must not retain data after it returns (a broker may
// reuse the buffer).
type Codec interface {
	// Name is the media type of the encoding, such as "application/json".
	Name() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, which is a non-nil pointer.
	Unmarshal(data []byte, v any) error
}

// Appender is an optional interface of a Codec that encodes into a buffer
// of the caller's: MarshalAppend appends the encoding of v to dst and
// returns the extended slice; dst[len(dst):] of the result holds what
// Marshal would return. A stream encodes each message this way into a
// buffer it reuses (codec/json, codec/msgpack and codec/proto implement
// it), so a message costs no allocation of its own. Like Marshal,
// MarshalAppend must not retain v nor the buffer; on an error the result
// is not to be used.
type Appender interface {
	MarshalAppend(dst []byte, v any) ([]byte, error)
}

// ErrUnsupported means a codec cannot encode or decode a value of the
// given type (a proto codec given a non-proto value, for instance).
var ErrUnsupported = errors.New("codec: unsupported type")

// UnsupportedTypeError returns an error wrapping ErrUnsupported that names
// the codec and the type.
func UnsupportedTypeError(codec string, v any) error {
	return fmt.Errorf("%w: %s cannot encode %T", ErrUnsupported, codec, v)
}

// MediaType returns the media type of a content-type header value, without
// parameters and in lower case: "Application/JSON; charset=utf-8" gives
// "application/json".
func MediaType(contentType string) string {
	if i := strings.IndexByte(contentType, ';'); i >= 0 {
		contentType = contentType[:i]
	}
	contentType = strings.TrimSpace(contentType)
	return strings.ToLower(contentType)
}
