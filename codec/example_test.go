package codec_test

import (
	"errors"
	"fmt"

	"github.com/mqrpc/mqrpc/codec"
	protocodec "github.com/mqrpc/mqrpc/codec/proto"
)

// A content-type header names a codec by its media type; parameters and
// case do not matter.
func ExampleMediaType() {
	fmt.Println(codec.MediaType("Application/JSON; charset=utf-8"))
	// Output: application/json
}

// A codec that cannot encode a value says so with ErrUnsupported.
func ExampleErrUnsupported() {
	_, err := protocodec.Codec{}.Marshal(struct{ A int }{1})
	fmt.Println(errors.Is(err, codec.ErrUnsupported))
	// Output: true
}
