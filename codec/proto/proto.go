// Package proto is the Protocol Buffers codec (application/protobuf), on
// google.golang.org/protobuf. It encodes values that implement
// proto.Message and refuses others with codec.ErrUnsupported.
package proto

import (
	"google.golang.org/protobuf/proto"

	"github.com/mqrpc/mqrpc/codec"
)

// Name is the media type of this codec.
const Name = "application/protobuf"

// Codec is the protobuf binary codec. The zero value is ready to use.
type Codec struct{}

var (
	_ codec.Codec    = Codec{}
	_ codec.Appender = Codec{}
)

// Name returns "application/protobuf".
func (Codec) Name() string { return Name }

// Marshal encodes v, which must be a proto.Message.
func (Codec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, codec.UnsupportedTypeError(Name, v)
	}
	return proto.Marshal(m)
}

// MarshalAppend appends the encoding of v, which must be a proto.Message,
// to dst (codec.Appender).
func (Codec) MarshalAppend(dst []byte, v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return dst, codec.UnsupportedTypeError(Name, v)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

// Unmarshal decodes data into v, which must be a proto.Message. Unknown
// fields are kept, as protobuf does.
func (Codec) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return codec.UnsupportedTypeError(Name, v)
	}
	return proto.Unmarshal(data, m)
}
