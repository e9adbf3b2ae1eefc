package liveness

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// A push travels as compact binary, "RLV1" then:
//
//	flags        1 byte: bit 0 "more": another part of the same range follows
//	node         uvarint length, then the sender's name
//	instance     8 bytes: the sender's process instance
//	echo         8 bytes: the receiver instance the echo cut belongs to, 0 if none
//	echo cut     varint: receiver time (ns) that the sealing of this push's newest epoch
//	             cannot precede
//	first, last  uvarint: the range of epochs the push covers (first > last: none new)
//	count        uvarint, then count × (16-byte session id, uvarint age in ms)
//
// A beat's age is counted, rounded down, from when the sender encoded the push, so the
// receiver's "arrival minus age" is never earlier than the beat.
const magic = "RLV1"

// maxNameLen bounds a sender's name on the wire.
const maxNameLen = 255

// beat is one session's latest beat in a push.
type beat struct {
	id  [16]byte
	age time.Duration // whole milliseconds
}

// push is one request of the exchange.
type push struct {
	Node        string
	Instance    uint64
	More        bool
	Echo        uint64
	EchoCut     int64
	First, Last uint64
	Beats       []beat
}

// Reply is the receiver's answer to a push.
type Reply struct {
	// Instance is the receiver's process instance; the sender echoes it back.
	Instance uint64 `json:"instance,string"`
	// Now is the receiver's time (ns since its view started) when it applied the push.
	Now int64 `json:"now_ns"`
	// LastSeq is the newest epoch of the sender's current instance the receiver holds
	// with every one before it; the sender's next push starts after it.
	LastSeq uint64 `json:"last_seq"`
}

func encodePush(p *push) []byte {
	b := make([]byte, 0, 64+len(p.Node)+len(p.Beats)*19)
	b = append(b, magic...)
	var flags byte
	if p.More {
		flags |= 1
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(p.Node)))
	b = append(b, p.Node...)
	b = binary.BigEndian.AppendUint64(b, p.Instance)
	b = binary.BigEndian.AppendUint64(b, p.Echo)
	b = binary.AppendVarint(b, p.EchoCut)
	b = binary.AppendUvarint(b, p.First)
	b = binary.AppendUvarint(b, p.Last)
	b = binary.AppendUvarint(b, uint64(len(p.Beats)))
	for _, bt := range p.Beats {
		b = append(b, bt.id[:]...)
		b = binary.AppendUvarint(b, uint64(bt.age/time.Millisecond))
	}
	return b
}

var errShort = errors.New("truncated")

func decodePush(b []byte) (*push, error) {
	if len(b) < len(magic)+1 || string(b[:len(magic)]) != magic {
		return nil, errors.New("not a liveness push (bad magic)")
	}
	p := &push{More: b[len(magic)]&1 != 0}
	b = b[len(magic)+1:]
	uv := func(what string) (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, fmt.Errorf("%s: %w", what, errShort)
		}
		b = b[n:]
		return v, nil
	}
	u64 := func(what string) (uint64, error) {
		if len(b) < 8 {
			return 0, fmt.Errorf("%s: %w", what, errShort)
		}
		v := binary.BigEndian.Uint64(b)
		b = b[8:]
		return v, nil
	}
	n, err := uv("node length")
	if err != nil {
		return nil, err
	}
	if n == 0 || n > maxNameLen || n > uint64(len(b)) {
		return nil, fmt.Errorf("node name of %d bytes", n)
	}
	p.Node, b = string(b[:n]), b[n:]
	if p.Instance, err = u64("instance"); err != nil {
		return nil, err
	}
	if p.Echo, err = u64("echo"); err != nil {
		return nil, err
	}
	cut, m := binary.Varint(b)
	if m <= 0 {
		return nil, fmt.Errorf("echo cut: %w", errShort)
	}
	p.EchoCut, b = cut, b[m:]
	if p.First, err = uv("first"); err != nil {
		return nil, err
	}
	if p.Last, err = uv("last"); err != nil {
		return nil, err
	}
	count, err := uv("count")
	if err != nil {
		return nil, err
	}
	if count > maxIDsPerPush || count*17 > uint64(len(b)) {
		return nil, fmt.Errorf("%d beats in %d bytes", count, len(b))
	}
	p.Beats = make([]beat, count)
	for i := range p.Beats {
		if len(b) < 16 {
			return nil, fmt.Errorf("beat %d: %w", i, errShort)
		}
		copy(p.Beats[i].id[:], b[:16])
		b = b[16:]
		ms, err := uv("age")
		if err != nil {
			return nil, err
		}
		if ms > uint64(100*365*24*time.Hour/time.Millisecond) {
			return nil, fmt.Errorf("beat %d: age of %d ms", i, ms)
		}
		p.Beats[i].age = time.Duration(ms) * time.Millisecond
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%d bytes after the last beat", len(b))
	}
	return p, nil
}

func decodeReply(b []byte) (Reply, error) {
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		return Reply{}, fmt.Errorf("liveness: decode the answer to a push: %w", err)
	}
	if r.Instance == 0 {
		return Reply{}, errors.New("liveness: the answer to a push names no instance")
	}
	return r, nil
}
