package kernel

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// NameRule is what a broker accepts as a subject (a topic, a queue name).
type NameRule struct {
	// Allowed reports whether r may appear in a name.
	Allowed func(r rune) bool
	// MaxLen is the longest name in bytes; zero means no limit.
	MaxLen int
}

// MapName maps name, any service name (such as the full gRPC name
// "helloworld.Greeter"), onto a name rule accepts. A name the rule accepts
// is returned as it is. Otherwise every rune the rule refuses becomes '_'
// and a hash of the original name is appended ("helloworld_Greeter-
// 1c4b3a5e"), cutting the name where it is too long, so two names that
// differ map to different names (up to the hash) and a name always maps
// the same way, in every process. Replacement and hash use only ASCII
// letters, digits, '_' and '-', which the rule must accept.
func MapName(name string, rule NameRule) string {
	if ok(name, rule) {
		return name
	}
	var b strings.Builder
	for _, r := range name {
		if rule.Allowed(r) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	suffix := "-" + strconv.FormatUint(uint64(h.Sum32()), 16)
	out := b.String()
	if rule.MaxLen > 0 && len(out)+len(suffix) > rule.MaxLen {
		cut := max(rule.MaxLen-len(suffix), 0)
		// cut at a rune boundary
		for cut > 0 && cut < len(out) && !isRuneStart(out[cut]) {
			cut--
		}
		out = out[:min(cut, len(out))]
	}
	return out + suffix
}

func ok(name string, rule NameRule) bool {
	if name == "" || (rule.MaxLen > 0 && len(name) > rule.MaxLen) {
		return false
	}
	for _, r := range name {
		if !rule.Allowed(r) {
			return false
		}
	}
	return true
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
