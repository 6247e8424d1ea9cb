// Package msgpack is the MessagePack codec (application/msgpack), on
// github.com/vmihailenco/msgpack/v5.
package msgpack

import (
	"github.com/vmihailenco/msgpack/v5"

	"github.com/mqrpc/mqrpc/codec"
)

// Name is the media type of this codec.
const Name = "application/msgpack"

// Codec is the MessagePack codec. The zero value is ready to use. Structs
// are encoded as maps keyed by field name (or the msgpack tag), so fields
// can be added without breaking older peers.
type Codec struct{}

var _ codec.Codec = Codec{}

// Name returns "application/msgpack".
func (Codec) Name() string { return Name }

// Marshal encodes v.
func (Codec) Marshal(v any) ([]byte, error) { return msgpack.Marshal(v) }

// Unmarshal decodes data into v. An empty body decodes as the zero value.
func (Codec) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	return msgpack.Unmarshal(data, v)
}
