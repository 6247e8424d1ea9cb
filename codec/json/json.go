// Package json is the JSON codec (application/json), on encoding/json.
package json

import (
	"encoding/json"

	"github.com/mqrpc/mqrpc/codec"
)

// Name is the media type of this codec.
const Name = "application/json"

// Codec is the JSON codec. The zero value is ready to use.
type Codec struct{}

var _ codec.Codec = Codec{}

// Name returns "application/json".
func (Codec) Name() string { return Name }

// Marshal encodes v with encoding/json.
func (Codec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes data into v with encoding/json. An empty body decodes
// as the zero value, so a request without fields needs no body at all.
func (Codec) Unmarshal(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	return json.Unmarshal(data, v)
}
