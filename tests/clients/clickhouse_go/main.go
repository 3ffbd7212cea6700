// Command clickhouse_go runs queries through Grafana's ClickHouse driver (clickhouse-go v2, HTTP protocol,
// opened through database/sql with the options the Grafana ClickHouse data source uses in HTTP mode) and
// prints what the driver decoded, as JSON, for tests/test_clients_go.py to compare.
//
// Usage: clickhouse_go -addr 127.0.0.1:8124 -user U -password P < queries.json
// queries.json: [{"name": "...", "sql": "..."}]; output: {"ping": ..., "server": ..., "results": [...]}
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/big"
	"net"
	"os"
	"reflect"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

type query struct {
	Name string `json:"name"`
	SQL  string `json:"sql"`
}

type column struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type result struct {
	Name    string   `json:"name"`
	Error   string   `json:"error,omitempty"`
	Columns []column `json:"columns"`
	Rows    [][]any  `json:"rows"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8124", "host:port of the ClickHouse HTTP interface")
	user := flag.String("user", "default", "user")
	password := flag.String("password", "", "password")
	database := flag.String("database", "default", "database")
	flag.Parse()

	var queries []query
	if err := json.NewDecoder(os.Stdin).Decode(&queries); err != nil {
		fmt.Fprintln(os.Stderr, "reading queries:", err)
		os.Exit(2)
	}
	// The Grafana data source's options in HTTP mode (pkg/plugin/driver.go, buildClickHouseOptions).
	opts := &clickhouse.Options{
		Addr:        []string{*addr},
		Auth:        clickhouse.Auth{Username: *user, Password: *password, Database: *database},
		ClientInfo:  clickhouse.ClientInfo{Products: []struct{ Name, Version string }{{"grafana", "12.0.0"}, {"clickhouse-datasource", "4.0.0"}}},
		Compression: &clickhouse.Compression{Method: clickhouse.CompressionGZIP},
		DialTimeout: 10 * time.Second,
		ReadTimeout: 60 * time.Second,
		Protocol:    clickhouse.HTTP,
		Settings:    clickhouse.Settings{},
	}
	db := clickhouse.OpenDB(opts)
	defer db.Close()
	ctx := context.Background()
	out := map[string]any{"driver": fmt.Sprintf("%s %d.%d.%d", clickhouse.ClientName, clickhouse.ClientVersionMajor,
		clickhouse.ClientVersionMinor, clickhouse.ClientVersionPatch)}
	if err := db.PingContext(ctx); err != nil {
		out["ping"] = err.Error()
	} else {
		out["ping"] = "ok"
	}
	// the same handshake through the driver's own API
	if conn, err := clickhouse.Open(opts); err == nil {
		if v, err := conn.ServerVersion(); err == nil {
			out["server"] = map[string]any{"name": v.DisplayName, "revision": v.Revision,
				"version":  fmt.Sprintf("%d.%d.%d", v.Version.Major, v.Version.Minor, v.Version.Patch),
				"timezone": v.Timezone.String()}
		} else {
			out["server"] = err.Error()
		}
		conn.Close()
	} else {
		out["server"] = err.Error()
	}
	results := []result{}
	for _, q := range queries {
		results = append(results, run(ctx, db, q))
	}
	out["results"] = results
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "writing results:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, db *sql.DB, q query) result {
	r := result{Name: q.Name, Columns: []column{}, Rows: [][]any{}}
	rows, err := db.QueryContext(ctx, q.SQL)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		r.Error = err.Error()
		return r
	}
	for _, t := range types {
		r.Columns = append(r.Columns, column{Name: t.Name(), Type: t.DatabaseTypeName()})
	}
	for rows.Next() {
		values := make([]any, len(types))
		for i, t := range types {
			values[i] = reflect.New(t.ScanType()).Interface()
		}
		if err := rows.Scan(values...); err != nil {
			r.Error = err.Error()
			return r
		}
		row := make([]any, len(values))
		for i, v := range values {
			row[i] = plain(reflect.ValueOf(v).Elem().Interface())
		}
		r.Rows = append(r.Rows, row)
	}
	if err := rows.Err(); err != nil {
		r.Error = err.Error()
	}
	return r
}

// plain turns what the driver decoded into JSON the test can compare: times as UTC RFC 3339, big numbers, IPs,
// UUIDs and decimals as text, NaN and infinities as text, pointers followed.
func plain(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Sprint(x) // NaN, +Inf, -Inf: not numbers in JSON
		}
		return x
	case float32:
		return plain(float64(x))
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case *big.Int:
		return x.String()
	case big.Int:
		return x.String()
	case net.IP:
		return x.String()
	case fmt.Stringer:
		if reflect.ValueOf(v).Kind() != reflect.Pointer {
			return x.String()
		}
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer:
		if rv.IsNil() {
			return nil
		}
		return plain(rv.Elem().Interface())
	case reflect.Slice, reflect.Array:
		items := make([]any, rv.Len())
		for i := range items {
			items[i] = plain(rv.Index(i).Interface())
		}
		return items
	case reflect.Map:
		m := map[string]any{}
		for _, k := range rv.MapKeys() {
			m[fmt.Sprint(plain(k.Interface()))] = plain(rv.MapIndex(k).Interface())
		}
		return m
	}
	return v
}
