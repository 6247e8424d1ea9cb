package chaos

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Row is one scenario's counts, a line of the summary table.
type Row struct {
	Target, Scenario string
	// Calls and their outcomes (FormatCodes), late calls and the longest
	// wait.
	Calls   int64
	Codes   string
	Late    int64
	MaxWait time.Duration
	// Mismatched replies (another caller's reply).
	Mismatched int64
	// Accepted tracked sends and how many of them were never served
	// (with the requests a scenario expects served, where it has some).
	Accepted, Lost int
	// FailedExecuted counts calls that failed although the server
	// executed them.
	FailedExecuted int
	// Executions of the methods, duplicate executions, and duplicate
	// commits (outcomes stored twice in a shared dedup store).
	Executions, Duplicates, DupCommits int
	// Goroutines before and after (after the settle wait), and the heap
	// in use after a GC before and after, in MiB.
	GoroutinesBefore, GoroutinesAfter int
	HeapBeforeMiB, HeapAfterMiB       float64
	// Note says what happened (outage length, poison outcomes, ...).
	Note string
	// Failed is true when the scenario's assertions failed.
	Failed bool
}

// Report collects the rows of a run; safe for concurrent use.
type Report struct {
	mu   sync.Mutex
	rows []Row
}

// Add appends a row.
func (r *Report) Add(row Row) {
	r.mu.Lock()
	r.rows = append(r.rows, row)
	r.mu.Unlock()
}

// Write prints the summary table.
func (r *Report) Write(w io.Writer) {
	r.mu.Lock()
	rows := append([]Row(nil), r.rows...)
	r.mu.Unlock()
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Target < rows[j].Target })
	fmt.Fprintln(w, "\n=== chaos summary (calls: 100+ concurrent callers, each with a deadline) ===")
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "target\tscenario\tresult\tcalls\tlate\tmax wait\twrong reply\taccepted\tlost\tfailed+exec\texecs\tdup execs\tdup commits\tgoroutines\theap MiB\toutcomes by code")
	for _, x := range rows {
		res := "PASS"
		if x.Failed {
			res = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%v\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d->%d\t%.0f->%.0f\t%s\n",
			x.Target, x.Scenario, res, x.Calls, x.Late, x.MaxWait.Round(time.Millisecond), x.Mismatched,
			x.Accepted, x.Lost, x.FailedExecuted, x.Executions, x.Duplicates, x.DupCommits, x.GoroutinesBefore, x.GoroutinesAfter, x.HeapBeforeMiB, x.HeapAfterMiB, x.Codes)
	}
	_ = tw.Flush()
	var notes []string
	for _, x := range rows {
		if x.Note != "" {
			notes = append(notes, fmt.Sprintf("  %s/%s: %s", x.Target, x.Scenario, x.Note))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "notes:")
		fmt.Fprintln(w, strings.Join(notes, "\n"))
	}
}
