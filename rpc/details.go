package rpc

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/mqrpc/mqrpc/codec"
)

// HeaderDetails is the reply header that carries an error's details: a
// JSON array of objects {"type": ..., "content-type": ..., "value": ...},
// value being the encoded detail in standard base64 (docs/PROTOCOL.md).
// It is set only on error replies with details.
const HeaderDetails = "mqrpc-details"

// ErrorDetail is a typed detail of an Error, saying more than the code and
// message can (which item was not found, which field was invalid, when to
// retry): a value encoded with a codec, under a type name both sides know.
// The entry has the shape of a google.rpc.Status detail (type URL and
// bytes) plus the content type, so details travel the same way with every
// codec and a client in any language can read them.
type ErrorDetail struct {
	// Type names the value's type: a protobuf type URL
	// ("type.googleapis.com/google.rpc.BadRequest") or a name of your own
	// ("example.com/inventory.OutOfStock").
	Type string
	// ContentType is the media type of the codec Value is encoded with,
	// such as "application/json" or "application/protobuf".
	ContentType string
	// Value is the encoded value.
	Value []byte
}

// NewErrorDetail encodes v with cd as a detail of type typ.
func NewErrorDetail(typ string, cd codec.Codec, v any) (ErrorDetail, error) {
	if typ == "" {
		return ErrorDetail{}, errors.New("rpc: error detail without a type")
	}
	b, err := cd.Marshal(v)
	if err != nil {
		return ErrorDetail{}, fmt.Errorf("rpc: encode error detail %s as %s: %w", typ, cd.Name(), err)
	}
	return ErrorDetail{Type: typ, ContentType: cd.Name(), Value: b}, nil
}

// Unmarshal decodes the detail's value into v with cd. It fails when the
// detail names a content type other than cd's.
func (d ErrorDetail) Unmarshal(cd codec.Codec, v any) error {
	if d.ContentType != "" && codec.MediaType(d.ContentType) != codec.MediaType(cd.Name()) {
		return fmt.Errorf("rpc: error detail %s is %s, not %s", d.Type, d.ContentType, cd.Name())
	}
	if err := cd.Unmarshal(d.Value, v); err != nil {
		return fmt.Errorf("rpc: decode error detail %s as %s: %w", d.Type, cd.Name(), err)
	}
	return nil
}

// WithDetails returns a copy of e with details added after the ones it
// has:
//
//	d, err := rpc.NewErrorDetail("example.com/inventory.OutOfStock", jsoncodec.Codec{}, &OutOfStock{SKU: sku})
//	return nil, rpc.Errorf(rpc.NotFound, "no stock of %s", sku).WithDetails(d)
func (e *Error) WithDetails(details ...ErrorDetail) *Error {
	c := *e
	c.details = append(slices.Clip(e.details), details...)
	return &c
}

// Details returns the error's details, in the order they were added; the
// slice must not be modified.
func (e *Error) Details() []ErrorDetail { return e.details }

// wireDetail is one entry of the HeaderDetails array.
type wireDetail struct {
	Type        string `json:"type"`
	ContentType string `json:"content-type,omitempty"`
	Value       string `json:"value"`
}

// encodeDetails returns the HeaderDetails value of details.
func encodeDetails(details []ErrorDetail) string {
	w := make([]wireDetail, len(details))
	for i, d := range details {
		w[i] = wireDetail{Type: d.Type, ContentType: d.ContentType, Value: base64.StdEncoding.EncodeToString(d.Value)}
	}
	b, _ := json.Marshal(w) // strings only: cannot fail
	return string(b)
}

// decodeDetails parses a HeaderDetails value. Values may be padded or not.
func decodeDetails(s string) ([]ErrorDetail, error) {
	var w []wireDetail
	if err := json.Unmarshal([]byte(s), &w); err != nil {
		return nil, err
	}
	out := make([]ErrorDetail, len(w))
	for i, d := range w {
		v, err := base64.StdEncoding.DecodeString(d.Value)
		if err != nil {
			if v, err = base64.RawStdEncoding.DecodeString(d.Value); err != nil {
				return nil, fmt.Errorf("detail %d (%s): %w", i, d.Type, err)
			}
		}
		out[i] = ErrorDetail{Type: d.Type, ContentType: d.ContentType, Value: v}
	}
	return out, nil
}
