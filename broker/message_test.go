package broker_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mqrpc/mqrpc/broker"
)

func TestHeaderCaseInsensitive(t *testing.T) {
	h := broker.Header{}
	h.Set("Content-Type", "application/json")
	assert.Equal(t, "application/json", h.Get("content-type"))
	assert.Equal(t, "application/json", h.Get("CONTENT-TYPE"))
	assert.Equal(t, broker.Header{"content-type": "application/json"}, h)
	h.Del("Content-TYPE")
	assert.Empty(t, h)
	var nilHeader broker.Header
	assert.Equal(t, "", nilHeader.Get("x"))
	assert.Nil(t, nilHeader.Clone())

	var m broker.Message
	m.SetHeader("X-A", "1")
	assert.Equal(t, "1", m.Header.Get("x-a"))
}

func TestDeadlineRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		t    time.Time
	}{
		{"WholeMillisecond", time.UnixMilli(1_700_000_000_123)},
		{"RoundsUp", time.UnixMilli(1_700_000_000_123).Add(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := broker.ParseDeadline(broker.FormatDeadline(tt.t))
			require.NoError(t, err)
			assert.False(t, got.Before(tt.t), "a deadline must never move earlier")
			assert.Less(t, got.Sub(tt.t), time.Millisecond)
		})
	}
	zero, err := broker.ParseDeadline("")
	require.NoError(t, err)
	assert.True(t, zero.IsZero())
	for _, bad := range []string{"abc", "-5", "0", "1.5", "99999999999999999999999"} {
		_, err := broker.ParseDeadline(bad)
		var he *broker.HeaderError
		assert.ErrorAs(t, err, &he, "value %q", bad)
	}
}

func TestMergeDeadline(t *testing.T) {
	early, late := time.UnixMilli(1_700_000_000_000), time.UnixMilli(1_700_000_001_000)
	tests := []struct {
		name    string
		d       time.Time
		value   string
		want    time.Time
		wantErr bool
	}{
		{"FirstValue", time.Time{}, broker.FormatDeadline(late), late, false},
		{"EarlierWins", late, broker.FormatDeadline(early), early, false},
		{"LaterIgnored", early, broker.FormatDeadline(late), early, false},
		{"EmptyKeeps", early, "", early, false},
		{"MalformedKeepsAndErrs", early, "soon", early, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := broker.MergeDeadline(tt.d, tt.value)
			if tt.wantErr {
				var he *broker.HeaderError
				assert.ErrorAs(t, err, &he)
			} else {
				assert.NoError(t, err)
			}
			assert.True(t, tt.want.Equal(got), "got %v, want %v", got, tt.want)
		})
	}
}

func TestExpired(t *testing.T) {
	now := time.Now()
	assert.False(t, (&broker.Message{}).Expired(now))
	assert.True(t, (&broker.Message{Deadline: now}).Expired(now))
	assert.False(t, (&broker.Message{Deadline: now.Add(time.Second)}).Expired(now))
}

func TestNewIDUnique(t *testing.T) {
	seen := make(map[string]bool, 10000)
	for i := 0; i < 10000; i++ {
		id := broker.NewID()
		require.False(t, seen[id], "duplicate id %s", id)
		seen[id] = true
	}
}

// IDs are random, not a counter: consecutive IDs share no prefix worth
// the name (6 equal leading characters by chance: 64^-6 per pair), so one
// ID tells nothing about the next.
func TestNewIDUnpredictable(t *testing.T) {
	prev := broker.NewID()
	for range 1000 {
		id := broker.NewID()
		require.Len(t, id, 22)
		require.Regexp(t, `^[A-Za-z0-9_-]+$`, id)
		n := 0
		for n < len(id) && id[n] == prev[n] {
			n++
		}
		require.Less(t, n, 6, "%s after %s", id, prev)
		prev = id
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = broker.NewID()
		}
	})
}

func TestServeConfigDefaults(t *testing.T) {
	c := broker.NewServeConfig("calc")
	assert.Equal(t, broker.ServeConfig{Concurrency: broker.DefaultConcurrency, Queue: "calc"}, c)
	c = broker.NewServeConfig("calc", broker.WithConcurrency(3), broker.WithQueue("workers"))
	assert.Equal(t, broker.ServeConfig{Concurrency: 3, Queue: "workers"}, c)
	c = broker.NewServeConfig("calc", broker.WithConcurrency(-1), broker.WithQueue(""))
	assert.Equal(t, broker.ServeConfig{Concurrency: broker.DefaultConcurrency, Queue: "calc"}, c)
}

func FuzzParseDeadline(f *testing.F) {
	for _, s := range []string{"", "0", "1700000000123", "-1", "abc", "1e9", " 12"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := broker.ParseDeadline(s)
		if err != nil {
			return
		}
		if s != "" && d.IsZero() {
			t.Fatalf("ParseDeadline(%q) gave the zero time without an error", s)
		}
	})
}

func TestClampDeadline(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	const max = 100 * 365 * 24 * time.Hour
	assert.True(t, broker.ClampDeadline(time.Time{}, now, max).IsZero(), "no deadline stays none")
	near := now.Add(time.Minute)
	assert.Equal(t, near, broker.ClampDeadline(near, now, max))
	for _, far := range []time.Time{now.Add(max + 1), now.AddDate(300, 0, 0), time.UnixMilli(1<<63 - 1), time.Unix(1<<62, 0)} {
		got := broker.ClampDeadline(far, now, max)
		assert.Equal(t, now.Add(max), got, "%v", far)
		assert.Equal(t, max, got.Sub(now), "no overflow in the arithmetic that follows")
	}
}

// A deadline beyond int64 milliseconds is written as the largest value,
// which reads back as a valid (far) deadline, not as an overflowed one.
func TestFormatDeadlineBeyondMilliseconds(t *testing.T) {
	for _, far := range []time.Time{time.UnixMilli(1<<63 - 1), time.Unix(1<<62, 0), time.Unix(1<<62, 0).AddDate(1000, 0, 0)} {
		s := broker.FormatDeadline(far)
		assert.Equal(t, "9223372036854775807", s, "%v", far)
		got, err := broker.ParseDeadline(s)
		require.NoError(t, err)
		assert.True(t, got.After(time.Now().AddDate(1_000_000, 0, 0)))
	}
}
