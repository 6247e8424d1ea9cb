package raw_test

import (
	"fmt"

	rawcodec "github.com/mqrpc/mqrpc/codec/raw"
)

// Bytes pass through as they are; Unmarshal reuses the capacity of *out.
func ExampleCodec() {
	var c rawcodec.Codec
	b, _ := c.Marshal("already encoded")
	var out []byte
	_ = c.Unmarshal(b, &out)
	_, err := c.Marshal(42)
	fmt.Println(c.Name(), string(out))
	fmt.Println(err)
	// Output:
	// application/octet-stream already encoded
	// codec: unsupported type: application/octet-stream cannot encode int
}
