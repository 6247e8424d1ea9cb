package harness

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ListenerPID returns the process that listens on TCP port on this
// machine (IPv4 or IPv6), found through /proc: the broker server a group
// of cases talks to, whose CPU time the harness then reads too.
func ListenerPID(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if err := listenInodes(f, port, inodes); err != nil && !os.IsNotExist(err) {
			return 0, err
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no process listens on TCP port %d", port)
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		link, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(link, "socket:[") {
			continue
		}
		if inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] {
			// fd is /proc/<pid>/fd/<n>.
			return strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(fd))))
		}
	}
	return 0, fmt.Errorf("the listener on TCP port %d belongs to no process this user can see", port)
}

// listenInodes adds the socket inodes of the listeners on port found in
// path (the format of /proc/net/tcp) to inodes.
func listenInodes(path string, port int, inodes map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the heading
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
			continue
		}
		i := strings.LastIndexByte(fs[1], ':')
		p, err := strconv.ParseUint(fs[1][i+1:], 16, 16)
		if err == nil && int(p) == port {
			inodes[fs[9]] = true
		}
	}
	return sc.Err()
}

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// pidsCPU returns the CPU time (user + system, all threads) the processes
// pids used so far, and false if one of them could not be read.
func pidsCPU(pids []int) (time.Duration, bool) {
	var sum time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return 0, false
		}
		// The command name, in parentheses, may hold spaces: fields are
		// counted after its closing parenthesis; utime and stime are
		// fields 14 and 15 of the line, 12 and 13 after it.
		s := string(b)
		fs := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fs) < 13 {
			return 0, false
		}
		ut, err1 := strconv.ParseInt(fs[11], 10, 64)
		st, err2 := strconv.ParseInt(fs[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, false
		}
		sum += time.Duration(ut+st) * clockTick
	}
	return sum, true
}
