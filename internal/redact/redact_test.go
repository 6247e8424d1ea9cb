package redact

import "testing"

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:guest@127.0.0.1:5672/": "amqp://redacted@127.0.0.1:5672/",
		"nats://s3cr3t-token@127.0.0.1:4222": "nats://redacted@127.0.0.1:4222",
		"amqp://u:p@ss:w/rd@host/vhost":      "amqp://redacted@host/vhost",
		"user:pw@host:1":                     "redacted@host:1",
		"nats://127.0.0.1:4222":              "nats://127.0.0.1:4222",
		"":                                   "",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}
