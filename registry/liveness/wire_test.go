package liveness

import (
	"reflect"
	"testing"
	"time"
)

func TestPushRoundTrip(t *testing.T) {
	id := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	for _, tc := range []struct {
		name string
		p    push
	}{
		{"empty", push{Node: "n1", Instance: 7, First: 4, Last: 3, Beats: []beat{}}},
		{"beats and echo", push{Node: "n2", Instance: 1 << 63, Echo: 9, EchoCut: -5, First: 1, Last: 2,
			Beats: []beat{{id: id, age: 1500 * time.Millisecond}, {id: [16]byte{}, age: 0}}}},
		{"more", push{Node: "n3", Instance: 3, More: true, EchoCut: noCut, First: 10, Last: 12, Beats: []beat{{id: id}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodePush(encodePush(&tc.p))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.p) {
				t.Fatalf("round trip = %+v, want %+v", *got, tc.p)
			}
		})
	}
}

func TestDecodePushRefuses(t *testing.T) {
	good := encodePush(&push{Node: "n1", Instance: 1, First: 1, Last: 1, Beats: []beat{{age: time.Second}}})
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"nothing", nil},
		{"bad magic", append([]byte("XLV1"), good[4:]...)},
		{"truncated", good[:len(good)-3]},
		{"trailing", append(append([]byte{}, good...), 0)},
		{"no name", []byte("RLV1\x00\x00")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodePush(tc.b); err == nil {
				t.Fatal("decoded")
			}
		})
	}
}
