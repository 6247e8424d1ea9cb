package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) { require.NoError(t, run("tcp")) }

func Example() {
	main()
	// Output: hello, tcp
}
