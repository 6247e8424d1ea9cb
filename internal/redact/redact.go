// Package redact hides credentials in broker URLs for errors and logs.
package redact

import "strings"

// URL returns raw with its user info replaced by "redacted". It does not
// parse the URL: a user info alone may be a token (nats://token@host), and
// a password that was not percent-encoded can spill out of what a parser
// takes for the user info, so everything between the scheme and the last
// '@' goes.
func URL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		scheme, rest = "", raw
	} else {
		scheme += "://"
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		rest = "redacted@" + rest[at+1:]
	}
	return scheme + rest
}

// URLs returns the URLs of a list, each passed through URL, joined with
// commas as NATS lists them.
func URLs(urls []string) string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = URL(u)
	}
	return strings.Join(out, ",")
}
