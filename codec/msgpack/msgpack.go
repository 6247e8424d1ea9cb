// Package msgpack is the MessagePack codec (application/msgpack), on
// github.com/vmihailenco/msgpack/v5.
package msgpack

import (
	"bytes"
	"sync"

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

// buffers keeps encode buffers between calls: msgpack.Marshal grows a new
// one each time, which cost two extra allocations per message.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Marshal encodes v. The result is a fresh slice the caller owns.
func (Codec) Marshal(v any) ([]byte, error) {
	buf := buffers.Get().(*bytes.Buffer)
	buf.Reset()
	enc := msgpack.GetEncoder()
	enc.Reset(buf)
	err := enc.Encode(v)
	msgpack.PutEncoder(enc)
	var out []byte
	if err == nil {
		out = bytes.Clone(buf.Bytes())
	}
	if buf.Cap() <= 64<<10 { // don't keep rare huge buffers alive
		buffers.Put(buf)
	}
	return out, err
}

// Unmarshal decodes data into v. An empty body decodes as the zero value.
func (Codec) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	d := decoders.Get().(*decoder)
	d.r.Reset(data)
	d.dec.Reset(&d.r)
	d.dec.UsePreallocateValues(true) // as msgpack.Unmarshal
	err := d.dec.Decode(v)
	d.r.Reset(nil)
	d.dec.Reset(&d.r)
	decoders.Put(d)
	return err
}

// decoder is msgpack.Unmarshal's decoder with its reader, pooled together:
// msgpack.Unmarshal allocates a bytes.Reader per call.
type decoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

var decoders = sync.Pool{New: func() any {
	d := new(decoder)
	d.dec = msgpack.NewDecoder(&d.r)
	return d
}}
