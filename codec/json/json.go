// Package json is the JSON codec (application/json), on encoding/json.
package json

import (
	"encoding/json"
	"sync"

	"github.com/mqrpc/mqrpc/codec"
	"github.com/mqrpc/mqrpc/codec/internal/appendw"
)

// Name is the media type of this codec.
const Name = "application/json"

// Codec is the JSON codec. The zero value is ready to use.
type Codec struct{}

var (
	_ codec.Codec    = Codec{}
	_ codec.Appender = Codec{}
)

// Name returns "application/json".
func (Codec) Name() string { return Name }

// Marshal encodes v with encoding/json.
func (Codec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// MarshalAppend appends the encoding of v to dst (codec.Appender): the
// same bytes as Marshal's, without the copy json.Marshal returns.
func (Codec) MarshalAppend(dst []byte, v any) ([]byte, error) {
	e := encoders.Get().(*encoder)
	e.w.B = dst
	err := e.enc.Encode(v)
	out := e.w.B
	e.w.B = nil // not to keep the caller's buffer
	encoders.Put(e)
	if err != nil {
		return dst, err
	}
	return out[:len(out)-1], nil // Encode ends the value with a newline
}

// encoder is a json.Encoder writing to an appendw.Writer, pooled. Its
// options are json.Marshal's (HTML escaped, no indent).
type encoder struct {
	w   appendw.Writer
	enc *json.Encoder
}

var encoders = sync.Pool{New: func() any {
	e := new(encoder)
	e.enc = json.NewEncoder(&e.w)
	return e
}}

// Unmarshal decodes data into v with encoding/json. An empty body decodes
// as the zero value, so a request without fields needs no body at all.
func (Codec) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	return json.Unmarshal(data, v)
}
