// Package appendw is the writer the codecs' pooled encoders write to, so
// that MarshalAppend encodes straight into the caller's buffer.
package appendw

// Writer appends what is written to B (an io.Writer and io.ByteWriter).
type Writer struct{ B []byte }

func (w *Writer) Write(p []byte) (int, error) {
	w.B = append(w.B, p...)
	return len(p), nil
}

// WriteByte appends c; encoders that find it write single bytes without
// a slice.
func (w *Writer) WriteByte(c byte) error {
	w.B = append(w.B, c)
	return nil
}
