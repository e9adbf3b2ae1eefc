package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
)

// allPages follows next_cursor from the first page to the last: fetch gets
// the page at a cursor ("" for the first). It returns the items of every
// page's array field, each exactly as the API sent it, and the last page.
func allPages(ctx context.Context, field string, fetch func(ctx context.Context, cursor string) ([]byte, error)) ([]json.RawMessage, map[string]json.RawMessage, error) {
	items := []json.RawMessage{}
	seen := map[string]bool{}
	cursor := ""
	for {
		data, err := fetch(ctx, cursor)
		if err != nil {
			return nil, nil, err
		}
		var page map[string]json.RawMessage
		if err := decodeAnswer(data, &page); err != nil {
			return nil, nil, err
		}
		var these []json.RawMessage
		if raw, ok := page[field]; ok {
			if err := decodeAnswer(raw, &these); err != nil {
				return nil, nil, err
			}
		}
		items = append(items, these...)
		var next string
		if raw, ok := page["next_cursor"]; ok {
			if err := decodeAnswer(raw, &next); err != nil {
				return nil, nil, err
			}
		}
		if next == "" {
			return items, page, nil
		}
		if seen[next] {
			return nil, nil, fmt.Errorf("the server returned next_cursor %q twice; stopping", next)
		}
		seen[next] = true
		cursor = next
	}
}

// joinedPage is the JSON of one page holding items (as the API sent them,
// not re-formatted) under field, then the extra fields (already JSON), then
// an empty next_cursor.
func joinedPage(field string, items []json.RawMessage, extra string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{%q:[`, field)
	for i, raw := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(raw)
	}
	b.WriteString("],")
	if extra != "" {
		b.WriteString(extra + ",")
	}
	b.WriteString(`"next_cursor":""}`)
	return b.Bytes()
}

// decodeItems decodes items sent by the API.
func decodeItems[T any](items []json.RawMessage) ([]T, error) {
	out := make([]T, len(items))
	for i, raw := range items {
		if err := decodeAnswer(raw, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}
