package registry

// ForgetCached empties this node's cache of live session records, as a
// node that has not read them yet (for tests and benchmarks).
func (r *Registry) ForgetCached() { r.forgetAll() }
