package rocketmq

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// nameServers parses New's nameServer: host:port addresses separated by
// ';', ',' or spaces, each of them optionally a rocketmq://host:port URL
// (the form broker/dial takes: rocketmq://h1:9876,h2:9876 or
// rocketmq://h1:9876,rocketmq://h2:9876).
func nameServers(nameServer string) ([]string, error) {
	var servers []string
	for _, s := range strings.FieldsFunc(nameServer, func(r rune) bool { return r == ';' || r == ',' || r == ' ' }) {
		if strings.Contains(s, "://") {
			u, err := url.Parse(s)
			if err != nil || u.Host == "" || !strings.EqualFold(u.Scheme, "rocketmq") || (u.Path != "" && u.Path != "/") {
				return nil, fmt.Errorf("rocketmq: name server %q: want host:port or rocketmq://host:port", s)
			}
			s = u.Host
		}
		servers = append(servers, s)
	}
	if len(servers) == 0 {
		return nil, errors.New("rocketmq: no name server address")
	}
	return servers, nil
}
