package services

import (
	"reflect"
	"testing"

	"github.com/sled-project/sled/events"
)

func TestUpConfigDefaults(t *testing.T) {
	d := UpConfig{Drafts: []string{"a", "b"}}.withDefaults()
	if d.Mode != ModeSLED || d.Pool != events.DefaultPool || d.WorkerName != "worker-1" || d.DeviceThreads != 1 || d.Devices != 2 || d.Logger == nil {
		t.Fatalf("defaults %+v", d)
	}
	if again := d.withDefaults(); !reflect.DeepEqual(again, d) {
		t.Fatalf("withDefaults not idempotent:\n%+v\n%+v", d, again)
	}
	set := UpConfig{Mode: ModeEdge, Pool: "p", WorkerName: "w", DeviceThreads: 3, Devices: 5}.withDefaults()
	if set.Mode != ModeEdge || set.Pool != "p" || set.WorkerName != "w" || set.DeviceThreads != 3 || set.Devices != 5 {
		t.Fatalf("set fields overridden: %+v", set)
	}
}
