// Package msgpack is the MessagePack codec (application/msgpack), on
// github.com/vmihailenco/msgpack/v5.
package msgpack

import (
	"bytes"
	"sync"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/mqrpc/mqrpc/codec"
	"github.com/mqrpc/mqrpc/codec/internal/appendw"
)

// Name is the media type of this codec.
const Name = "application/msgpack"

// Codec is the MessagePack codec. The zero value is ready to use. Structs
// are encoded as maps keyed by field name (or the msgpack tag), so fields
// can be added without breaking older peers.
type Codec struct{}

var (
	_ codec.Codec    = Codec{}
	_ codec.Appender = Codec{}
)

// Name returns "application/msgpack".
func (Codec) Name() string { return Name }

// Marshal encodes v. The result is a fresh slice the caller owns.
func (Codec) Marshal(v any) ([]byte, error) {
	e := encoders.Get().(*encoder)
	e.w.B = e.scratch[:0]
	err := e.enc.Encode(v)
	var out []byte
	if err == nil {
		out = bytes.Clone(e.w.B)
	}
	if cap(e.w.B) <= 64<<10 { // don't keep rare huge buffers alive
		e.scratch = e.w.B[:0]
	}
	e.put()
	return out, err
}

// MarshalAppend appends the encoding of v to dst (codec.Appender).
func (Codec) MarshalAppend(dst []byte, v any) ([]byte, error) {
	e := encoders.Get().(*encoder)
	e.w.B = dst
	err := e.enc.Encode(v)
	out := e.w.B
	e.put()
	return out, err
}

// encoder is an encoder that appends to a slice, pooled: msgpack.Marshal
// grows a new buffer each time, which cost two extra allocations per
// message. scratch is Marshal's buffer, kept between calls.
type encoder struct {
	w       appendw.Writer
	enc     *msgpack.Encoder
	scratch []byte
}

var encoders = sync.Pool{New: func() any {
	e := new(encoder)
	e.enc = msgpack.NewEncoder(&e.w)
	return e
}}

func (e *encoder) put() {
	e.w.B = nil // not to keep the caller's buffer
	encoders.Put(e)
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
