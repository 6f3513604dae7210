package engine

// Memory: giving a burst's memory back to the kernel.
//
// A process that runs llama.cpp keeps the resident memory of its largest burst
// unless told otherwise; measured on `sled up --pair tiny` (docs/benchmarks.md,
// "Memory"), RSS went from 68 MB to 117 MB after one 900 KB prompt and 200
// concurrent requests and stayed there idle (110 MB after Go's 2-minute forced
// collection). Two mechanisms, neither of them a leak:
//
//   - glibc's malloc. Blocks of 128 KiB or more start out in mmap'd chunks that
//     free unmaps, but freeing one raises the mmap threshold to its size (up to 32
//     MiB) and the trim threshold to twice that. The tokenizer's buffers for a long
//     prompt (about 25 MB for 900 KB of text) are then carved from a per-thread
//     arena, whose top chunk only shrinks beyond the raised trim threshold and which
//     malloc_trim does not touch: 25 MB stayed resident, free inside malloc.
//     Setting the threshold once (mallopt M_MMAP_THRESHOLD, at the first model load)
//     turns that adjustment off, so large blocks always go back to the kernel when
//     freed. malloc_trim(0) then returns what small frees leave in the arenas' bins.
//   - Go's heap. After a burst (200 connections: goroutine stacks, bufio buffers,
//     JSON, sync.Pools of nats-server's 8 MB blocks) the heap's high-water mark stays
//     mapped until later collections and the background scavenger shrink it; a
//     process that goes idle collects nothing (the forced collection comes every 2
//     minutes), and the scavenger returns only what exceeds the last heap goal.
//
// So once llama.cpp work has stopped for IdleRelease (default DefaultIdleRelease),
// the engine calls ReleaseMemory: two collections (the second frees what the first
// moved to sync.Pools' victim caches), debug.FreeOSMemory and malloc_trim(0). It
// runs once per idle period, never while a Decode, tokenization, load or free is in
// flight, and costs a few milliseconds of one core; no goroutine waits while the
// process is idle. MALLOC_ARENA_MAX=1 or 2 was measured too: within 4 MB of the
// default (8 arenas per core), so the arena count is left alone.

/*
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

typedef struct {
	size_t arena, inuse, free, mmapped;
	int ok;
} sled_cheap;

static sled_cheap sled_cheap_stats(void) {
	sled_cheap s = {0};
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
	struct mallinfo2 mi = mallinfo2();
	s.arena = mi.arena;
	s.inuse = mi.uordblks;
	s.free = mi.fordblks;
	s.mmapped = mi.hblkhd;
	s.ok = 1;
#endif
	return s;
}

static void sled_cheap_trim(void) {
#if defined(__GLIBC__)
	malloc_trim(0);
#endif
}

static void sled_cheap_fix_mmap_threshold(size_t n) {
#if defined(__GLIBC__)
	mallopt(M_MMAP_THRESHOLD, (int)n);
#endif
}
*/
import "C"

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultIdleRelease is how long llama.cpp work must have stopped before the
// engine gives the process's free memory back to the kernel (SetIdleRelease).
const DefaultIdleRelease = 5 * time.Second

// MmapThreshold is the size from which glibc's malloc serves a block from its own
// mmap (returned to the kernel by free), fixed at the first model load: glibc's
// initial value, which it would otherwise raise after every large free. The
// environment's MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES=glibc.malloc.mmap_threshold
// take precedence.
const MmapThreshold = 128 << 10

// SetIdleRelease sets how long llama.cpp work (Decode, tokenizing, loading or
// freeing a model or context) must have stopped before the engine calls
// ReleaseMemory, once per idle period. d <= 0 turns the release off. Default
// DefaultIdleRelease. Safe for concurrent use.
func SetIdleRelease(d time.Duration) {
	idle.delay.Store(max(int64(d), 0))
}

// IdleReleases is how many times the engine has released memory after going idle.
func IdleReleases() int64 { return idle.releases.Load() }

// ReleaseMemory returns free memory to the kernel now: Go's (two collections, then
// debug.FreeOSMemory) and the C heap's (malloc_trim(0)). It blocks for a few
// milliseconds; callers that do not care when need not call it: the engine does,
// IdleRelease after its work stops.
func ReleaseMemory() {
	runtime.GC()
	debug.FreeOSMemory()
	C.sled_cheap_trim()
}

// CHeapStats are the C heap's figures (glibc's mallinfo2): what llama.cpp and the
// other C code hold, and what malloc keeps free.
type CHeapStats struct {
	// Arena is the bytes malloc holds in its arenas, allocated or free; Mmapped the
	// bytes of blocks mapped on their own (models' and contexts' buffers, mostly).
	Arena, Mmapped uint64
	// InUse is the bytes allocated in the arenas; Free the free bytes they keep.
	InUse, Free uint64
	// OK is false where the C library does not report (not glibc 2.33 or later).
	OK bool
}

// CHeap returns the C heap's figures.
func CHeap() CHeapStats {
	s := C.sled_cheap_stats()
	return CHeapStats{Arena: uint64(s.arena), Mmapped: uint64(s.mmapped), InUse: uint64(s.inuse), Free: uint64(s.free), OK: s.ok != 0}
}

// fixMmapThreshold pins glibc's mmap threshold (see MmapThreshold) unless the
// environment sets it. Called once, from initBackend.
func fixMmapThreshold() {
	if os.Getenv("MALLOC_MMAP_THRESHOLD_") != "" || strings.Contains(os.Getenv("GLIBC_TUNABLES"), "mmap_threshold") {
		return
	}
	C.sled_cheap_fix_mmap_threshold(C.size_t(MmapThreshold))
}

// idle tracks llama.cpp work for the idle release.
var idle struct {
	delay    atomic.Int64 // nanoseconds; 0: off
	busy     atomic.Int64 // work in flight
	last     atomic.Int64 // when work last ended, nanoseconds since epoch
	armed    atomic.Bool  // a check is scheduled
	releases atomic.Int64
}

var epoch = time.Now()

func init() { idle.delay.Store(int64(DefaultIdleRelease)) }

func sinceEpoch() int64 { return int64(time.Since(epoch)) }

// beginWork and endWork bracket llama.cpp work: beginWork(); defer endWork().
func beginWork() { idle.busy.Add(1) }

func endWork() {
	idle.last.Store(sinceEpoch())
	idle.busy.Add(-1)
	if d := idle.delay.Load(); d > 0 && idle.armed.CompareAndSwap(false, true) {
		time.AfterFunc(time.Duration(d), idleCheck)
	}
}

// idleCheck runs on a timer: it waits again while work goes on, else releases.
func idleCheck() {
	d := idle.delay.Load()
	if d <= 0 {
		idle.armed.Store(false)
		return
	}
	seen := idle.last.Load()
	if wait := seen + d - sinceEpoch(); wait > 0 || idle.busy.Load() > 0 {
		time.AfterFunc(time.Duration(max(wait, d/4)), idleCheck)
		return
	}
	idle.armed.Store(false)
	start := time.Now()
	ReleaseMemory()
	idle.releases.Add(1)
	slog.Debug("engine: idle, returned free memory to the kernel", "took", time.Since(start))
	// Work that ended while this ran saw the check armed and scheduled none.
	if idle.last.Load() != seen && idle.armed.CompareAndSwap(false, true) {
		time.AfterFunc(time.Duration(d), idleCheck)
	}
}
