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

func TestURLs(t *testing.T) {
	got := URLs([]string{"nats://tok@h1:4222", "nats://h2:4222", "tls://u:p@h3:4222"})
	if want := "nats://redacted@h1:4222,nats://h2:4222,tls://redacted@h3:4222"; got != want {
		t.Errorf("URLs = %q, want %q", got, want)
	}
}
