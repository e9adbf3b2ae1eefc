package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MaxSeats bounds a licence's seats.
const MaxSeats = 100_000

// ErrNoLicenseSeat: every seat of the module's licence is taken (see *NoSeatError).
var ErrNoLicenseSeat = errors.New("registry: no license seat")

// ErrLicenseNotFound: the module has no licence in the tenant.
var ErrLicenseNotFound = errors.New("registry: license not found")

// License is a module's licence in a tenant: how many sessions of the module may be
// open at once, and who holds the seats.
type License struct {
	Tenant  string       `json:"tenant"`
	Module  string       `json:"module"`
	Seats   int          `json:"seats"`
	InUse   int          `json:"in_use"`
	Holders []SeatHolder `json:"holders"`
	SetBy   string       `json:"set_by"`
	SetAt   time.Time    `json:"set_at"`
}

// SeatHolder is a session that holds a seat.
type SeatHolder struct {
	Session string    `json:"session"`
	User    string    `json:"user"`
	Host    string    `json:"host,omitempty"`
	Since   time.Time `json:"since"`
}

// LicenseSpec is the body of PUT /v1/licenses/{tenant}/{module}.
type LicenseSpec struct {
	Seats int `json:"seats"`
}

// storedLicense is the value of a licence key.
type storedLicense struct {
	Seats int       `json:"seats"`
	SetBy string    `json:"set_by"`
	SetAt time.Time `json:"set_at"`
}

// NoSeatError refuses an open: every seat of the module's licence is taken.
type NoSeatError struct {
	Tenant, Module string
	Seats, InUse   int
	Holders        []SeatHolder // the first few
}

func (e *NoSeatError) Error() string {
	tenant := ""
	if e.Tenant != DefaultTenant {
		tenant = " in tenant " + e.Tenant
	}
	if e.Seats == 0 {
		return fmt.Sprintf("module %s%s has a licence of 0 seats: no logins are allowed; an admin can raise it (roster license set %s --seats N)", e.Module, tenant, e.Module)
	}
	var hs []string
	for _, h := range e.Holders {
		s := h.User
		if h.Host != "" {
			s += "@" + h.Host
		}
		hs = append(hs, s)
	}
	more := ""
	if e.InUse > len(e.Holders) {
		more = fmt.Sprintf(" and %d more", e.InUse-len(e.Holders))
	}
	return fmt.Sprintf("no free licence seat for module %s%s: %d of %d seats in use, held by %s%s; a seat is freed when one of them logs out, is killed or expires",
		e.Module, tenant, e.InUse, e.Seats, strings.Join(hs, ", "), more)
}

// Is makes a NoSeatError match ErrNoLicenseSeat.
func (e *NoSeatError) Is(target error) bool { return target == ErrNoLicenseSeat }

// SetLicense sets the seats of a module's licence in a tenant (admins only). Lowering
// them below the seats in use ends nobody: new logins wait until use drops below.
func (r *Registry) SetLicense(ctx context.Context, p Principal, tenant, module string, spec LicenseSpec) (License, error) {
	if err := requireRole(p, "set licences", RoleAdmin); err != nil {
		return License{}, err
	}
	if err := errors.Join(checkName("tenant", tenant), checkName("module", module)); err != nil {
		return License{}, err
	}
	if spec.Seats < 0 || spec.Seats > MaxSeats {
		return License{}, invalid("seats", "is %d; give 0 to %d (0 refuses every login into the module; delete the licence to lift the limit)", spec.Seats, MaxSeats)
	}
	val, _ := json.Marshal(storedLicense{Seats: spec.Seats, SetBy: p.By(), SetAt: time.Now().UTC().Truncate(time.Second)})
	if err := r.putAudited(ctx, licenseKey(tenant, module), string(val), AuditRecord{Action: AuditLicenseSet, Actor: p.By(),
		Tenant: tenant, Module: module, Target: tenant + "/" + module, Details: map[string]string{"seats": strconv.Itoa(spec.Seats)}}); err != nil {
		return License{}, translate("set licence", err)
	}
	r.log.Info("licence set", "tenant", tenant, "module", module, "seats", spec.Seats, "by", p.By())
	return r.License(ctx, p, tenant, module)
}

// DeleteLicense removes a module's licence: its logins are no longer counted.
func (r *Registry) DeleteLicense(ctx context.Context, p Principal, tenant, module string) error {
	if err := requireRole(p, "delete licences", RoleAdmin); err != nil {
		return err
	}
	if err := errors.Join(checkName("tenant", tenant), checkName("module", module)); err != nil {
		return err
	}
	found, err := r.deleteAudited(ctx, licenseKey(tenant, module), AuditRecord{Action: AuditLicenseDelete, Actor: p.By(),
		Tenant: tenant, Module: module, Target: tenant + "/" + module})
	if err != nil {
		return translate("delete licence", err)
	}
	if !found {
		return licenseNotFound(tenant, module)
	}
	r.log.Info("licence deleted", "tenant", tenant, "module", module, "by", p.By())
	return nil
}

func licenseNotFound(tenant, module string) error {
	return &notFoundError{sentinel: ErrLicenseNotFound, msg: fmt.Sprintf("module %s has no licence in tenant %s", module, tenant)}
}

// License returns one licence with its seats in use and their holders (operators and admins).
func (r *Registry) License(ctx context.Context, p Principal, tenant, module string) (License, error) {
	if err := errors.Join(checkName("tenant", tenant), checkName("module", module)); err != nil {
		return License{}, err
	}
	all, err := r.readLicenses(ctx, p, licenseKey(tenant, module), seatPrefix(tenant, module))
	if err != nil {
		return License{}, err
	}
	if len(all) == 0 {
		return License{}, licenseNotFound(tenant, module)
	}
	return all[0], nil
}

// Licenses lists the licences of tenant ("" for every tenant), by tenant and module.
func (r *Registry) Licenses(ctx context.Context, p Principal, tenant string) ([]License, error) {
	if tenant != "" {
		if err := checkName("tenant", tenant); err != nil {
			return nil, err
		}
		return r.readLicenses(ctx, p, licensesPrefix+tenant+"/", seatsPrefix+tenant+"/")
	}
	return r.readLicenses(ctx, p, licensesPrefix, seatsPrefix)
}

// readLicenses reads the licences under licPrefix and the seats under seatPfx in one read.
func (r *Registry) readLicenses(ctx context.Context, p Principal, licPrefix, seatPfx string) ([]License, error) {
	if err := requireRole(p, "read licences", RoleOperator, RoleAdmin); err != nil {
		return nil, err
	}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	resp, err := r.cli.Txn(cctx).Then(clientv3.OpGet(licPrefix, clientv3.WithPrefix()), clientv3.OpGet(seatPfx, clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, translate("read licences", err)
	}
	var out []License
	byKey := map[string]*License{}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		tenant, module, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), licensesPrefix), "/")
		var st storedLicense
		if err := json.Unmarshal(kv.Value, &st); err != nil {
			return nil, fmt.Errorf("registry: decode licence %s: %w", kv.Key, err)
		}
		out = append(out, License{Tenant: tenant, Module: module, Seats: st.Seats, SetBy: st.SetBy, SetAt: st.SetAt, Holders: []SeatHolder{}})
	}
	for i := range out {
		byKey[out[i].Tenant+"/"+out[i].Module] = &out[i]
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		rest := strings.TrimPrefix(string(kv.Key), seatsPrefix)
		l := byKey[rest[:max(strings.LastIndexByte(rest, '/'), 0)]]
		if l == nil {
			continue // a seat of a licence deleted meanwhile: it goes with its session
		}
		var h SeatHolder
		if json.Unmarshal(kv.Value, &h) == nil {
			l.Holders = append(l.Holders, h)
			l.InUse++
		}
	}
	return out, nil
}

// seatPlan is what an open in a licensed module adds to its transaction.
type seatPlan struct {
	key  string // the seat taken
	cmps []clientv3.Cmp
	put  clientv3.Op
}

// seatReads are the reads planSeat needs, to be done in one transaction with
// the open's other reads: the licence of rec's module. An open does not read
// the seats unless its first attempt conflicted.
func seatReads(rec *record) []clientv3.Op {
	return []clientv3.Op{clientv3.OpGet(licenseKey(rec.Tenant, rec.Module))}
}

// seatElse is the read an open's failed transaction makes for the next
// attempt: the seats held, keys only.
func seatElse(rec *record) clientv3.Op {
	return clientv3.OpGet(seatPrefix(rec.Tenant, rec.Module), clientv3.WithPrefix(), clientv3.WithKeysOnly())
}

// planSeat picks a seat for rec, with the licence read by seatReads as
// response licIdx of resp. A module without licence needs none: the plan
// only checks that it still has none. With a licence it compares that the
// licence did not change and that the picked seat is free.
//
// Seats are numbered slots below the licence's seats, so opens that pick
// different slots do not conflict, and the slots' uniqueness keeps the count
// within the seats. A first attempt picks a slot at random without reading
// which are held (held is nil); an attempt after a conflict picks among the
// free slots that its failed transaction read at revision heldRev (held),
// or refuses the open when they are all taken. Every attempt also compares
// that no slot at or above the seats is held. After the seats were lowered
// such slots may still be held: then the count decides, and the transaction
// compares that no seat was taken since heldRev.
func (r *Registry) planSeat(ctx context.Context, rec *record, resp *clientv3.TxnResponse, licIdx int, held []*mvccpb.KeyValue, heldRev int64) (seatPlan, error) {
	lk := licenseKey(rec.Tenant, rec.Module)
	pfx := seatPrefix(rec.Tenant, rec.Module)
	lic := resp.Responses[licIdx].GetResponseRange().Kvs
	if len(lic) == 0 {
		return seatPlan{cmps: []clientv3.Cmp{clientv3.Compare(clientv3.Version(lk), "=", 0)}}, nil
	}
	var st storedLicense
	if err := json.Unmarshal(lic[0].Value, &st); err != nil {
		return seatPlan{}, fmt.Errorf("registry: decode licence %s: %w", lk, err)
	}
	if st.Seats == 0 {
		return seatPlan{}, r.noSeat(ctx, rec, 0, 0)
	}
	slot, retired := rand.IntN(st.Seats), false
	if held != nil {
		if len(held) >= st.Seats {
			return seatPlan{}, r.noSeat(ctx, rec, st.Seats, len(held))
		}
		taken := make(map[int]bool, len(held))
		for _, kv := range held {
			if n, err := strconv.Atoi(strings.TrimPrefix(string(kv.Key), pfx)); err == nil {
				taken[n] = true
				retired = retired || n >= st.Seats
			}
		}
		free := make([]int, 0, max(st.Seats-len(taken), 0))
		for n := range st.Seats {
			if !taken[n] {
				free = append(free, n)
			}
		}
		slot = free[rand.IntN(len(free))]
	}
	h, _ := json.Marshal(SeatHolder{Session: rec.ID, User: rec.User, Host: rec.Host, Since: rec.StartedAt})
	key := seatKey(rec.Tenant, rec.Module, slot)
	plan := seatPlan{
		key: key,
		cmps: []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(lk), "=", lic[0].ModRevision),
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		},
		put: clientv3.OpPut(key, string(h), clientv3.WithLease(clientv3.LeaseID(rec.LeaseID))),
	}
	if retired {
		plan.cmps = append(plan.cmps, clientv3.Compare(clientv3.ModRevision(pfx), "<", heldRev+1).WithPrefix())
	} else {
		above := seatKey(rec.Tenant, rec.Module, st.Seats)
		plan.cmps = append(plan.cmps, clientv3.Compare(clientv3.CreateRevision(above), "=", 0).WithRange(clientv3.GetPrefixRangeEnd(pfx)))
	}
	return plan, nil
}

// noSeat builds the refusal of an open in a module whose seats are all
// held, naming the first few holders.
func (r *Registry) noSeat(ctx context.Context, rec *record, seats, inUse int) error {
	e := &NoSeatError{Tenant: rec.Tenant, Module: rec.Module, Seats: seats, InUse: inUse}
	cctx, cancel := r.opCtx(ctx)
	defer cancel()
	if resp, err := r.cli.Get(cctx, seatPrefix(rec.Tenant, rec.Module), clientv3.WithPrefix(), clientv3.WithLimit(5)); err == nil {
		for _, kv := range resp.Kvs {
			var h SeatHolder
			if json.Unmarshal(kv.Value, &h) == nil {
				e.Holders = append(e.Holders, h)
			}
		}
	}
	return e
}
