//! The region table's ordered map: a copy-on-write B+tree from region start address to
//! an opaque word (the table stores `*const Region`). It owns its nodes and the writers'
//! reserve of spare nodes, and calls only `meta` (node memory), `region::epoch` (freeing
//! replaced nodes after the grace period) and `crossbeam_epoch` (the caller's `Guard`).
//! Readers descend from one `Acquire` load of the root, without locks or shared writes.
//! Writers, serialised by the table's writer mutex, copy the path they change (splitting,
//! merging and borrowing on the way up) and publish it with one `Release` store of the
//! root, so a reader sees an update whole or not at all.

use crate::meta;
use crate::region::epoch;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use crossbeam_epoch::Guard;

/// Node size: a power of two because `meta` serves power-of-two blocks (so the node fills
/// its block), cache-line aligned. Chosen by `tests::floor_latency` at 100k random keys
/// (release, ns per `floor`): 128 B (fan-out 7) 97 ns, 256 B (15) 79 ns, 512 B (31)
/// 88 ns; inserts cost a path copy, so smaller nodes also copy less.
const NODE_BYTES: usize = 256;
/// Entries per node: a key word and a slot word each, after the 8-byte header.
const FANOUT: usize = (NODE_BYTES - 8) / 16;
/// Every node but the root holds at least this many entries, so the depth is at most
/// `1 + log_MIN_FILL(n / 2)`. Splitting `FANOUT + 1` entries, or merging an underfull
/// node (`MIN_FILL - 1`) with a sibling, gives nodes of at least `MIN_FILL`.
const MIN_FILL: usize = FANOUT / 2;
const _: () = assert!(MIN_FILL >= 2 && (FANOUT + 1) / 2 >= MIN_FILL);
/// A tree of `L` levels holds at least `2 * MIN_FILL^(L-1)` entries: 14 levels of
/// fan-out 15 would need 2 * 7^13 ≈ 2e11 regions, more pages than a 47-bit address
/// space has. The bound sizes the writers' path arrays.
const MAX_LEVELS: usize = 16;
/// Padding key of unused slots: `rank` scans all `FANOUT` keys without a length test.
const PAD: usize = usize::MAX;

#[derive(Debug, PartialEq, Eq)]
pub enum TreeError {
    /// `meta` had no memory for a node; the tree is unchanged.
    OutOfMemory,
    /// `insert`: the key is present. `rekey`: another key lies at or between the two.
    KeyExists,
    /// `rekey`: the old key is not in the tree.
    NotFound,
}

#[repr(C, align(64))]
struct Node {
    len: u32,
    /// 0 for leaves; the children of a node at height `h` have height `h - 1`.
    height: u32,
    /// Strictly increasing, `PAD` past `len`. In an inner node `keys[i]` is exactly the
    /// smallest key under child `i`, so a descent never has to back up to a neighbour.
    keys: [usize; FANOUT],
    /// Leaf: values, atomic because `replace` stores them in place. Inner: children
    /// (exposed-provenance addresses), never written after publication.
    slots: [AtomicUsize; FANOUT],
}
const _: () = assert!(core::mem::size_of::<Node>() == NODE_BYTES);

impl Node {
    /// The number of keys `<= key`: branch-free over all slots (the padding compares
    /// greater except against `usize::MAX`, hence the clamp).
    #[inline(always)]
    fn rank(&self, key: usize) -> usize {
        let below = self
            .keys
            .iter()
            .map(|&k| usize::from(k <= key))
            .sum::<usize>();
        below.min(self.len as usize)
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> usize {
        // Acquire pairs with the Release in `replace` (a leaf value may point to a fresh
        // object); child slots are immutable, so the ordering costs nothing there.
        self.slots[i].load(Ordering::Acquire)
    }

    #[inline(always)]
    fn child(&self, i: usize) -> *const Node {
        ptr::with_exposed_provenance(self.slot(i))
    }

    #[inline(always)]
    fn entry(&self, i: usize) -> (usize, usize) {
        (self.keys[i], self.slot(i))
    }
}

/// Up to two nodes' worth of entries (an underfull node plus a full sibling, or a full
/// node plus one): the content of the node(s) a writer is about to build.
struct Entries {
    len: usize,
    keys: [usize; 2 * FANOUT],
    slots: [usize; 2 * FANOUT],
}

impl Entries {
    fn new() -> Self {
        Entries {
            len: 0,
            keys: [PAD; 2 * FANOUT],
            slots: [0; 2 * FANOUT],
        }
    }

    fn push(&mut self, key: usize, slot: usize) {
        self.keys[self.len] = key;
        self.slots[self.len] = slot;
        self.len += 1;
    }

    fn extend(&mut self, node: &Node, range: core::ops::Range<usize>) {
        for i in range {
            // Relaxed: only the (serialised) writer writes slots, and it is us.
            self.push(node.keys[i], node.slots[i].load(Ordering::Relaxed));
        }
    }

    fn of(node: &Node) -> Self {
        let mut e = Entries::new();
        e.extend(node, 0..node.len as usize);
        e
    }

    fn insert(&mut self, at: usize, key: usize, slot: usize) {
        self.keys.copy_within(at..self.len, at + 1);
        self.slots.copy_within(at..self.len, at + 1);
        self.keys[at] = key;
        self.slots[at] = slot;
        self.len += 1;
    }

    fn remove(&mut self, at: usize) {
        self.keys.copy_within(at + 1..self.len, at);
        self.slots.copy_within(at + 1..self.len, at);
        self.len -= 1;
    }
}

/// A writer's descent: the node and the child (inner) or rank (leaf) taken at each level.
struct Path {
    nodes: [*const Node; MAX_LEVELS],
    index: [usize; MAX_LEVELS],
    levels: usize,
}

impl Path {
    fn leaf(&self) -> &Node {
        // SAFETY: path nodes are live: the writer mutex keeps them from being replaced.
        unsafe { &*self.nodes[self.levels - 1] }
    }

    fn rank(&self) -> usize {
        self.index[self.levels - 1]
    }

    /// The leaf position of `key`, if present.
    fn exact(&self, key: usize) -> Option<usize> {
        let rank = if self.levels == 0 { 0 } else { self.rank() };
        (rank > 0 && self.leaf().keys[rank - 1] == key).then(|| rank - 1)
    }
}

/// What one write allocated (freed again if it cannot finish) and unlinked (freed after
/// the grace period once the new root is published).
struct Writes {
    fresh: [*mut Node; 2 * MAX_LEVELS + 1],
    fresh_len: usize,
    retired: [*const Node; 2 * MAX_LEVELS],
    retired_len: usize,
}

/// Spare nodes for `remove`, which cannot report failure: linked through `keys[0]`.
struct Spares {
    head: *mut Node,
    count: usize,
}

/// The ordered map. Readers need only a pinned `Guard`; writers (`insert`, `remove`,
/// `replace`, `rekey`) must be serialised by the caller.
pub struct RangeTree {
    /// Release-stored by writers after the new nodes are written; Acquire-loaded by
    /// readers, so everything reachable from the root they see is initialised.
    root: AtomicPtr<Node>,
    /// A statistic: readers may see it lag the root, so Relaxed throughout.
    len: AtomicUsize,
    spares: UnsafeCell<Spares>,
}

// SAFETY: readers touch only `root`, `len` (atomics) and published nodes (immutable but
// for atomic value slots); `spares` and node construction belong to writers, which the
// callers serialise (the `# Safety` contract of every writer method).
unsafe impl Sync for RangeTree {}
// SAFETY: the nodes are metadata memory, owned by the tree and not tied to a thread.
unsafe impl Send for RangeTree {}

impl Default for RangeTree {
    fn default() -> Self {
        Self::new()
    }
}

impl RangeTree {
    pub const fn new() -> Self {
        RangeTree {
            root: AtomicPtr::new(ptr::null_mut()),
            len: AtomicUsize::new(0),
            spares: UnsafeCell::new(Spares {
                head: ptr::null_mut(),
                count: 0,
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Greatest entry with key <= `key` (the region that may contain address `key`).
    #[inline]
    pub fn floor(&self, key: usize, _guard: &Guard) -> Option<(usize, usize)> {
        // Acquire: see `root`.
        let mut node: *const Node = self.root.load(Ordering::Acquire);
        if node.is_null() {
            return None;
        }
        loop {
            // SAFETY: `node` is reachable from a root loaded while `_guard` pins us, and
            // writers free unlinked nodes only after the grace period.
            let n = unsafe { &*node };
            let rank = n.rank(key);
            // Child minima are exact, so rank 0 happens only at the root: key < all.
            if rank == 0 {
                return None;
            }
            if n.height == 0 {
                return Some(n.entry(rank - 1));
            }
            node = n.child(rank - 1);
        }
    }

    /// Smallest entry with key > `key` (the next neighbour).
    pub fn next_after(&self, key: usize, _guard: &Guard) -> Option<(usize, usize)> {
        // Acquire: see `root`.
        let mut node: *const Node = self.root.load(Ordering::Acquire);
        // The deepest subtree seen so far that starts after `key`.
        let mut after: *const Node = ptr::null();
        while !node.is_null() {
            // SAFETY: as in `floor`.
            let n = unsafe { &*node };
            let rank = n.rank(key);
            if rank < n.len as usize {
                if n.height == 0 {
                    return Some(n.entry(rank));
                }
                after = n.child(rank);
            }
            if rank == 0 || n.height == 0 {
                break;
            }
            node = n.child(rank - 1);
        }
        // SAFETY: as in `floor`.
        unsafe { after.as_ref().map(leftmost) }
    }

    /// Greatest entry with key < `key` (the previous neighbour).
    pub fn prev_before(&self, key: usize, guard: &Guard) -> Option<(usize, usize)> {
        self.floor(key.checked_sub(1)?, guard)
    }

    /// The value stored at exactly `key`.
    pub fn get(&self, key: usize, guard: &Guard) -> Option<usize> {
        self.floor(key, guard)
            .filter(|&(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Visits every entry in key order, in one snapshot (one root load).
    pub fn for_each(&self, _guard: &Guard, mut f: impl FnMut(usize, usize)) {
        // Acquire: see `root`.
        let root = self.root.load(Ordering::Acquire);
        // SAFETY: as in `floor`; the whole snapshot stays pinned by `_guard`.
        if let Some(root) = unsafe { root.as_ref() } {
            visit(root, &mut f);
        }
    }

    /// Inserts `key -> value`. On error the tree is unchanged.
    ///
    /// # Safety
    /// The caller holds the table's writer mutex (writers are serialised) and `guard` is
    /// pinned for the whole call.
    pub unsafe fn insert(&self, key: usize, value: usize, guard: &Guard) -> Result<(), TreeError> {
        let path = self.descend(key);
        if path.levels == 0 {
            self.refill_spares(1)?;
            let mut entries = Entries::new();
            entries.push(key, value);
            let mut writes = Writes::new();
            let leaf = self.build(
                &mut writes,
                0,
                &entries.keys[..1],
                &entries.slots[..1],
                false,
            )?;
            // SAFETY: writer mutex held (caller contract); the leaf is fully written.
            unsafe { self.publish(&writes, leaf, guard) };
        } else {
            if path.exact(key).is_some() {
                return Err(TreeError::KeyExists);
            }
            if path.levels == MAX_LEVELS {
                return Err(TreeError::OutOfMemory);
            }
            self.refill_spares(2 * path.levels + 1)?;
            let mut entries = Entries::of(path.leaf());
            entries.insert(path.rank(), key, value);
            // SAFETY: writer mutex held and `guard` pinned (caller contract).
            unsafe { self.commit(&path, entries, false, guard)? };
        }
        // Relaxed: see `len`; we are the only writer.
        self.len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes `key` and returns its value. Never fails: if `meta` is out of memory it
    /// builds from the spare nodes that `insert` and `rekey` keep stocked for the current
    /// depth (they fail rather than leave it short); only back-to-back removals with
    /// metadata exhausted could drain it, which is fatal.
    ///
    /// # Safety
    /// As `insert`.
    pub unsafe fn remove(&self, key: usize, guard: &Guard) -> Option<usize> {
        let path = self.descend(key);
        let at = path.exact(key)?;
        // Best effort: a shortfall is covered by what is already in stock.
        let _ = self.refill_spares(2 * path.levels - 1);
        // Relaxed: only writers store slots, and we are the writer.
        let value = path.leaf().slots[at].load(Ordering::Relaxed);
        let mut entries = Entries::of(path.leaf());
        entries.remove(at);
        // SAFETY: writer mutex held and `guard` pinned (caller contract).
        if unsafe { self.commit(&path, entries, true, guard) }.is_err() {
            crate::fatal("region tree: removal failed with spare nodes in use");
        }
        // Relaxed: see `len`.
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(value)
    }

    /// Replaces the value stored at `key` in place (no allocation); returns the old one.
    ///
    /// # Safety
    /// As `insert`.
    pub unsafe fn replace(&self, key: usize, value: usize, _guard: &Guard) -> Option<usize> {
        let path = self.descend(key);
        let at = path.exact(key)?;
        // Release pairs with readers' Acquire in `Node::slot`: what `value` points to is
        // visible to whoever loads it. Readers of older versions may still return the
        // old value, as they would under copy-on-write. The swap's read is ours alone.
        Some(path.leaf().slots[at].swap(value, Ordering::Release))
    }

    /// Moves the entry at `old` to `new`, which must keep its place in key order (no other
    /// key at or between them). On error the tree is unchanged.
    ///
    /// # Safety
    /// As `insert`.
    pub unsafe fn rekey(&self, old: usize, new: usize, guard: &Guard) -> Result<(), TreeError> {
        let path = self.descend(old);
        let at = path.exact(old).ok_or(TreeError::NotFound)?;
        let blocked = match new.cmp(&old) {
            core::cmp::Ordering::Equal => return Ok(()),
            core::cmp::Ordering::Less => {
                self.prev_before(old, guard).is_some_and(|(k, _)| k >= new)
            }
            core::cmp::Ordering::Greater => {
                self.next_after(old, guard).is_some_and(|(k, _)| k <= new)
            }
        };
        if blocked {
            return Err(TreeError::KeyExists);
        }
        self.refill_spares(2 * path.levels - 1)?;
        let mut entries = Entries::of(path.leaf());
        entries.keys[at] = new;
        // SAFETY: writer mutex held and `guard` pinned (caller contract).
        unsafe { self.commit(&path, entries, false, guard) }
    }

    fn descend(&self, key: usize) -> Path {
        let mut path = Path {
            nodes: [ptr::null(); MAX_LEVELS],
            index: [0; MAX_LEVELS],
            levels: 0,
        };
        // Relaxed: the writer mutex orders us after the writer that stored it.
        let mut node: *const Node = self.root.load(Ordering::Relaxed);
        // SAFETY: published nodes stay live while the writer mutex is held.
        while let Some(n) = unsafe { node.as_ref() } {
            let rank = n.rank(key);
            path.nodes[path.levels] = node;
            path.levels += 1;
            if n.height == 0 {
                path.index[path.levels - 1] = rank;
                break;
            }
            // A key below the subtree's minimum goes into its first child.
            path.index[path.levels - 1] = rank.saturating_sub(1);
            node = n.child(rank.saturating_sub(1));
        }
        path
    }

    /// Makes `entries` the content of the leaf at the end of `path`, rebuilding every
    /// node above it, then publishes the new root. Underfull nodes merge with (or borrow
    /// from) a sibling, overfull ones split, a root with one child gives way to it.
    ///
    /// # Safety
    /// Writer mutex held, `guard` pinned.
    unsafe fn commit(
        &self,
        path: &Path,
        mut entries: Entries,
        spare: bool,
        guard: &Guard,
    ) -> Result<(), TreeError> {
        let mut writes = Writes::new();
        let mut level = path.levels - 1;
        let root = loop {
            // SAFETY: path nodes are live (writer mutex held).
            let old = unsafe { &*path.nodes[level] };
            writes.retire(old);
            let height = old.height;
            if level == 0 {
                if entries.len == 0 {
                    break ptr::null_mut();
                }
                if height > 0 && entries.len == 1 {
                    break ptr::with_exposed_provenance_mut(entries.slots[0]);
                }
                let mut top = Entries::new();
                self.emit(&mut writes, &entries, height, spare, &mut top)?;
                if top.len == 1 {
                    break ptr::with_exposed_provenance_mut(top.slots[0]);
                }
                break self.build(
                    &mut writes,
                    height + 1,
                    &top.keys[..2],
                    &top.slots[..2],
                    spare,
                )?;
            }
            // SAFETY: path nodes are live (writer mutex held).
            let parent = unsafe { &*path.nodes[level - 1] };
            let at = path.index[level - 1];
            let (mut first, mut end) = (at, at + 1);
            if entries.len < MIN_FILL {
                // Non-root nodes have >= 2 entries, so a sibling exists.
                if at > 0 {
                    // SAFETY: children of live nodes are live.
                    let left = unsafe { &*parent.child(at - 1) };
                    writes.retire(left);
                    let mut merged = Entries::of(left);
                    for i in 0..entries.len {
                        merged.push(entries.keys[i], entries.slots[i]);
                    }
                    entries = merged;
                    first = at - 1;
                } else {
                    // SAFETY: children of live nodes are live.
                    let right = unsafe { &*parent.child(at + 1) };
                    writes.retire(right);
                    entries.extend(right, 0..right.len as usize);
                    end = at + 2;
                }
            }
            let mut up = Entries::new();
            up.extend(parent, 0..first);
            self.emit(&mut writes, &entries, height, spare, &mut up)?;
            up.extend(parent, end..parent.len as usize);
            entries = up;
            level -= 1;
        };
        // SAFETY: writer mutex held and `guard` pinned (caller contract).
        unsafe { self.publish(&writes, root, guard) };
        Ok(())
    }

    /// Builds `entries` as one node, or two halves if they do not fit, and pushes
    /// (minimum key, node) for each onto `up`.
    fn emit(
        &self,
        writes: &mut Writes,
        entries: &Entries,
        height: u32,
        spare: bool,
        up: &mut Entries,
    ) -> Result<(), TreeError> {
        let n = entries.len;
        let cut = if n <= FANOUT { n } else { n / 2 };
        for range in [0..cut, cut..n] {
            if !range.is_empty() {
                let node = self.build(
                    writes,
                    height,
                    &entries.keys[range.clone()],
                    &entries.slots[range.clone()],
                    spare,
                )?;
                up.push(entries.keys[range.start], node.expose_provenance());
            }
        }
        Ok(())
    }

    /// Allocates and writes a node. On failure every node of this write is freed.
    fn build(
        &self,
        writes: &mut Writes,
        height: u32,
        keys: &[usize],
        slots: &[usize],
        spare: bool,
    ) -> Result<*mut Node, TreeError> {
        let mut p = alloc_node();
        if p.is_null() && spare {
            // SAFETY: writer mutex held (spare is only set by `remove`).
            p = unsafe { self.pop_spare() };
        }
        if p.is_null() {
            // SAFETY: none of the fresh nodes was published.
            unsafe { writes.rollback() };
            return Err(TreeError::OutOfMemory);
        }
        let mut node_keys = [PAD; FANOUT];
        node_keys[..keys.len()].copy_from_slice(keys);
        let node = Node {
            len: keys.len() as u32,
            height,
            keys: node_keys,
            slots: core::array::from_fn(|i| AtomicUsize::new(slots.get(i).copied().unwrap_or(0))),
        };
        // SAFETY: `p` is a fresh meta block of NODE_BYTES, aligned for Node (meta blocks
        // of a power-of-two class are aligned to their size).
        unsafe { p.write(node) };
        writes.fresh[writes.fresh_len] = p;
        writes.fresh_len += 1;
        Ok(p)
    }

    /// # Safety
    /// Writer mutex held, `guard` pinned; every node reachable from `root` is written.
    unsafe fn publish(&self, writes: &Writes, root: *mut Node, guard: &Guard) {
        // Release: see `root`.
        self.root.store(root, Ordering::Release);
        for &old in &writes.retired[..writes.retired_len] {
            // SAFETY: `old` is unreachable from the new root; readers that still hold it
            // are pinned, and the block is freed only after they unpin.
            unsafe { epoch::defer_meta_free(guard, old as *mut u8) };
        }
    }

    /// Tops the spare stock up to `want` nodes.
    fn refill_spares(&self, want: usize) -> Result<(), TreeError> {
        // SAFETY: only writers call this, and the caller serialises them.
        let spares = unsafe { &mut *self.spares.get() };
        while spares.count < want {
            let p = alloc_node();
            if p.is_null() {
                return Err(TreeError::OutOfMemory);
            }
            // SAFETY: a fresh block, big enough for a Node; we use its first key as link.
            unsafe { ptr::addr_of_mut!((*p).keys[0]).write(spares.head.expose_provenance()) };
            spares.head = p;
            spares.count += 1;
        }
        Ok(())
    }

    /// # Safety
    /// Writer mutex held.
    unsafe fn pop_spare(&self) -> *mut Node {
        // SAFETY: caller contract.
        let spares = unsafe { &mut *self.spares.get() };
        let p = spares.head;
        if !p.is_null() {
            // SAFETY: spare nodes link through their first key (see `refill_spares`).
            spares.head = ptr::with_exposed_provenance_mut(unsafe { (*p).keys[0] });
            spares.count -= 1;
        }
        p
    }
}

impl Drop for RangeTree {
    /// Frees every node at once: only when no reader can exist any more.
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer remains.
        unsafe {
            if let Some(root) = self.root.get_mut().as_ref() {
                free_subtree(root);
            }
            loop {
                let p = self.pop_spare();
                if p.is_null() {
                    break;
                }
                meta::free(p as *mut u8);
            }
        }
    }
}

impl Writes {
    fn new() -> Self {
        Writes {
            fresh: [ptr::null_mut(); 2 * MAX_LEVELS + 1],
            fresh_len: 0,
            retired: [ptr::null(); 2 * MAX_LEVELS],
            retired_len: 0,
        }
    }

    fn retire(&mut self, node: &Node) {
        self.retired[self.retired_len] = node;
        self.retired_len += 1;
    }

    /// # Safety
    /// None of the fresh nodes may have been published.
    unsafe fn rollback(&mut self) {
        for &p in &self.fresh[..self.fresh_len] {
            // SAFETY: never published, so no reader can hold it (caller contract).
            unsafe { meta::free(p as *mut u8) };
        }
        self.fresh_len = 0;
    }
}

fn alloc_node() -> *mut Node {
    #[cfg(test)]
    if tests::fail_this_alloc() {
        return ptr::null_mut();
    }
    meta::alloc(NODE_BYTES, core::mem::align_of::<Node>()) as *mut Node
}

fn leftmost(mut node: &Node) -> (usize, usize) {
    while node.height > 0 {
        // SAFETY: children of a node reachable under the caller's pin are reachable too.
        node = unsafe { &*node.child(0) };
    }
    node.entry(0)
}

fn visit(node: &Node, f: &mut impl FnMut(usize, usize)) {
    for i in 0..node.len as usize {
        if node.height == 0 {
            let (key, value) = node.entry(i);
            f(key, value);
        } else {
            // SAFETY: as in `leftmost`.
            visit(unsafe { &*node.child(i) }, f);
        }
    }
}

/// # Safety
/// No reader or writer may reach `node` any more.
unsafe fn free_subtree(node: &Node) {
    if node.height > 0 {
        for i in 0..node.len as usize {
            // SAFETY: children are exclusively ours too (caller contract).
            unsafe { free_subtree(&*node.child(i)) };
        }
    }
    // SAFETY: caller contract; `node` is not used after this.
    unsafe { meta::free(node as *const Node as *mut u8) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    thread_local! {
        /// Node allocations on this thread that succeed before `alloc_node` fails.
        static ALLOCS_LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    pub(super) fn fail_this_alloc() -> bool {
        ALLOCS_LEFT.with(|left| {
            let n = left.get();
            left.set(n.saturating_sub(1));
            n == 0
        })
    }

    fn entries(tree: &RangeTree) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        tree.for_each(&epoch::pin(), |k, v| out.push((k, v)));
        out
    }

    fn levels(tree: &RangeTree) -> usize {
        // SAFETY: test trees have no concurrent writer.
        unsafe { tree.root.load(Ordering::Acquire).as_ref() }.map_or(0, |r| r.height as usize + 1)
    }

    /// Checks every structural invariant; returns the entry count.
    fn check(tree: &RangeTree) -> usize {
        fn walk(n: &Node, is_root: bool, lo: usize, hi: Option<usize>) -> usize {
            let len = n.len as usize;
            assert!(
                len <= FANOUT
                    && len
                        >= if is_root {
                            1 + (n.height > 0) as usize
                        } else {
                            MIN_FILL
                        }
            );
            assert!(n.keys[len..].iter().all(|&k| k == PAD), "padding");
            assert!(n.keys[..len].windows(2).all(|w| w[0] < w[1]), "order");
            assert!(
                n.keys[0] >= lo && hi.is_none_or(|h| n.keys[len - 1] < h),
                "bounds"
            );
            if n.height == 0 {
                return len;
            }
            (0..len)
                .map(|i| {
                    // SAFETY: test trees have no concurrent writer.
                    let c = unsafe { &*n.child(i) };
                    assert_eq!(c.height + 1, n.height);
                    assert_eq!(c.keys[0], n.keys[i], "inner keys are exact child minima");
                    walk(
                        c,
                        false,
                        n.keys[i],
                        n.keys.get(i + 1).copied().filter(|_| i + 1 < len).or(hi),
                    )
                })
                .sum()
        }
        // SAFETY: as above.
        let count = unsafe { tree.root.load(Ordering::Acquire).as_ref() }
            .map_or(0, |r| walk(r, true, 0, None));
        assert_eq!(count, tree.len());
        count
    }

    #[test]
    fn empty_tree() {
        let tree = RangeTree::new();
        let g = epoch::pin();
        assert!(tree.is_empty() && levels(&tree) == 0);
        for k in [0, 1, usize::MAX] {
            assert_eq!(tree.floor(k, &g), None);
            assert_eq!(tree.next_after(k, &g), None);
            assert_eq!(tree.prev_before(k, &g), None);
            assert_eq!(tree.get(k, &g), None);
        }
        // SAFETY: single-threaded test: writers are serialised.
        unsafe {
            assert_eq!(tree.remove(5, &g), None);
            assert_eq!(tree.replace(5, 1, &g), None);
            assert_eq!(tree.rekey(5, 6, &g), Err(TreeError::NotFound));
        }
        assert!(entries(&tree).is_empty());
    }

    #[test]
    fn extreme_keys_and_neighbours() {
        let tree = RangeTree::new();
        let g = epoch::pin();
        // SAFETY: single-threaded test: writers are serialised.
        unsafe {
            tree.insert(usize::MAX, 1, &g).unwrap();
            assert_eq!(tree.floor(usize::MAX - 1, &g), None);
            assert_eq!(tree.floor(usize::MAX, &g), Some((usize::MAX, 1)));
            tree.insert(0, 2, &g).unwrap();
            assert_eq!(tree.insert(0, 3, &g), Err(TreeError::KeyExists));
            assert_eq!(tree.floor(12345, &g), Some((0, 2)));
            assert_eq!(tree.next_after(0, &g), Some((usize::MAX, 1)));
            assert_eq!(tree.next_after(usize::MAX, &g), None);
            assert_eq!(tree.prev_before(usize::MAX, &g), Some((0, 2)));
            assert_eq!(tree.prev_before(0, &g), None);
            assert_eq!(tree.replace(0, 7, &g), Some(2));
            assert_eq!(tree.get(0, &g), Some(7));
            assert_eq!(tree.rekey(0, usize::MAX, &g), Err(TreeError::KeyExists));
            assert_eq!(tree.rekey(usize::MAX, 0, &g), Err(TreeError::KeyExists));
            tree.rekey(usize::MAX, 10, &g).unwrap();
            tree.rekey(10, 10, &g).unwrap();
            assert_eq!(entries(&tree), [(0, 7), (10, 1)]);
            assert_eq!(tree.remove(0, &g), Some(7));
            assert_eq!(tree.remove(10, &g), Some(1));
        }
        assert!(tree.is_empty() && levels(&tree) == 0);
    }

    /// Ascending, descending and interleaved fills split every level up to 4 levels deep,
    /// then removals in the same orders merge, borrow and collapse them back down.
    #[test]
    fn splits_and_merges_at_every_level() {
        let n = FANOUT * FANOUT * FANOUT * 2;
        let orders: [Box<dyn Fn(usize) -> usize>; 3] = [
            Box::new(|i| i),
            Box::new(move |i| n - 1 - i),
            Box::new(move |i| (i * 7919) % n),
        ];
        for order in &orders {
            let tree = RangeTree::new();
            let g = epoch::pin();
            let mut seen_levels = 0;
            for i in 0..n {
                // SAFETY: single-threaded test: writers are serialised.
                unsafe { tree.insert(order(i) * 4, order(i), &g).unwrap() };
                if levels(&tree) > seen_levels || i % 97 == 0 {
                    seen_levels = levels(&tree);
                    check(&tree);
                }
            }
            assert_eq!(seen_levels, 4);
            for k in 0..n {
                assert_eq!(tree.floor(k * 4 + 3, &g), Some((k * 4, k)));
                assert_eq!(tree.get(k * 4 + 1, &g), None);
                assert_eq!(
                    tree.next_after(k * 4, &g),
                    (k + 1 < n).then(|| ((k + 1) * 4, k + 1))
                );
                assert_eq!(
                    tree.prev_before(k * 4, &g),
                    k.checked_sub(1).map(|p| (p * 4, p))
                );
            }
            assert_eq!(
                entries(&tree),
                (0..n).map(|k| (k * 4, k)).collect::<Vec<_>>()
            );
            for i in 0..n {
                // SAFETY: as above.
                assert_eq!(unsafe { tree.remove(order(i) * 4, &g) }, Some(order(i)));
                if i % 97 == 0 || n - i < 64 {
                    check(&tree);
                }
            }
            assert!(tree.is_empty() && levels(&tree) == 0);
        }
    }

    /// Every allocation point of insert and rekey failing leaves the tree as it was;
    /// remove with `meta` failing succeeds from the spares.
    #[test]
    fn out_of_memory_leaves_tree_unchanged() {
        let tree = RangeTree::new();
        let g = epoch::pin();
        let mut failures = 0;
        for k in 0..FANOUT * FANOUT * 3 {
            // SAFETY: single-threaded test: writers are serialised.
            unsafe { tree.insert(k * 2, k, &g).unwrap() };
            let before = entries(&tree);
            for fail_at in 0..8 {
                let mut with_budget = |op: &dyn Fn() -> Result<(), TreeError>| {
                    ALLOCS_LEFT.with(|l| l.set(fail_at));
                    let result = op();
                    ALLOCS_LEFT.with(|l| l.set(usize::MAX));
                    assert!(matches!(result, Ok(()) | Err(TreeError::OutOfMemory)));
                    failures += result.is_err() as usize;
                    result.is_ok()
                };
                // SAFETY (all three): single-threaded test: writers are serialised.
                if with_budget(&|| unsafe { tree.insert(k * 2 + 1, 0, &g) }) {
                    assert_eq!(unsafe { tree.remove(k * 2 + 1, &g) }, Some(0));
                }
                if with_budget(&|| unsafe { tree.rekey(k * 2, k * 2 + 1, &g) }) {
                    unsafe { tree.rekey(k * 2 + 1, k * 2, &g).unwrap() };
                }
                assert_eq!(entries(&tree), before);
                check(&tree);
            }
        }
        assert!(failures > 0);
        ALLOCS_LEFT.with(|l| l.set(0));
        for k in (0..FANOUT * FANOUT * 3).rev() {
            // SAFETY: as above.
            assert_eq!(unsafe { tree.remove(k * 2, &g) }, Some(k));
            // SAFETY: as above.
            let spares = unsafe { &mut *tree.spares.get() };
            // Restock, as the next successful insert would.
            ALLOCS_LEFT.with(|l| l.set(usize::MAX));
            tree.refill_spares(spares.count + 8).unwrap();
            ALLOCS_LEFT.with(|l| l.set(0));
            check(&tree);
        }
        ALLOCS_LEFT.with(|l| l.set(usize::MAX));
    }

    /// Random operation sequences against `BTreeMap`, from tiny key spaces (dense
    /// collisions, shallow trees) to wide ones (deep trees).
    #[test]
    fn matches_btreemap_model() {
        let mut rng = SmallRng::seed_from_u64(0x7265_6769_6f6e);
        for seq in 0..3000 {
            let space = [16, 64, 512, 4096][seq % 4];
            let ops = if seq % 50 == 0 { 6000 } else { 200 };
            let tree = RangeTree::new();
            let mut model = BTreeMap::new();
            let g = epoch::pin();
            for _ in 0..ops {
                let k = rng.gen_range(0..space);
                let v = rng.gen::<usize>();
                // SAFETY: single-threaded test: writers are serialised.
                unsafe {
                    match rng.gen_range(0..10) {
                        0..=2 => {
                            let want = if model.contains_key(&k) {
                                Err(TreeError::KeyExists)
                            } else {
                                Ok(())
                            };
                            assert_eq!(tree.insert(k, v, &g), want);
                            model.entry(k).or_insert(v);
                        }
                        3..=4 => assert_eq!(tree.remove(k, &g), model.remove(&k)),
                        5 => {
                            let old = model.get_mut(&k).map(|old| core::mem::replace(old, v));
                            assert_eq!(tree.replace(k, v, &g), old);
                        }
                        6 => {
                            let new = (k + rng.gen_range(0..9)).saturating_sub(4);
                            let (lo, hi) = (k.min(new), k.max(new));
                            let want = if !model.contains_key(&k) {
                                Err(TreeError::NotFound)
                            } else if model.range(lo..=hi).any(|(&o, _)| o != k) {
                                Err(TreeError::KeyExists)
                            } else {
                                Ok(())
                            };
                            assert_eq!(tree.rekey(k, new, &g), want);
                            if want.is_ok() {
                                let value = model.remove(&k).unwrap();
                                model.insert(new, value);
                            }
                        }
                        _ => {
                            let (m, mv) = (&model, |(&a, &b): (&usize, &usize)| (a, b));
                            assert_eq!(tree.floor(k, &g), m.range(..=k).next_back().map(mv));
                            assert_eq!(tree.next_after(k, &g), m.range(k + 1..).next().map(mv));
                            assert_eq!(tree.prev_before(k, &g), m.range(..k).next_back().map(mv));
                            assert_eq!(tree.get(k, &g), m.get(&k).copied());
                        }
                    }
                }
                assert_eq!(tree.len(), model.len());
            }
            check(&tree);
            assert_eq!(entries(&tree), model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn depth_stays_logarithmic_at_100k() {
        let tree = RangeTree::new();
        let mut rng = SmallRng::seed_from_u64(42);
        let mut keys: Vec<usize> = (0..100_000)
            .map(|i| i << 16 | rng.gen_range(0..1 << 16))
            .collect();
        let g = epoch::pin();
        for (i, &k) in keys.iter().enumerate() {
            // SAFETY: single-threaded test: writers are serialised.
            unsafe { tree.insert(k, i, &g).unwrap() };
        }
        check(&tree);
        // Lower bound on entries of an L-level tree: 2 * MIN_FILL^(L-1).
        let bound = |n: f64| 1 + ((n / 2.0).ln() / (MIN_FILL as f64).ln()).floor() as usize;
        assert!(levels(&tree) <= bound(1e5), "{} levels", levels(&tree));
        for i in (1..keys.len()).rev() {
            keys.swap(i, rng.gen_range(0..=i));
        }
        for &k in &keys[..99_000] {
            // SAFETY: as above.
            assert!(unsafe { tree.remove(k, &g) }.is_some());
        }
        check(&tree);
        assert_eq!(tree.len(), 1000);
        assert!(
            levels(&tree) <= bound(1e3),
            "{} levels after removals",
            levels(&tree)
        );
    }

    /// One writer inserts, removes, replaces and rekeys while readers look up. Key
    /// `16 * slot + offset` always carries a value naming its slot, and every key is
    /// marked in `ever` before it is published: readers check both, and the order.
    #[test]
    fn concurrent_readers_see_consistent_snapshots() {
        const SLOTS: usize = 4096;
        let tree = Arc::new(RangeTree::new());
        let ever: Arc<Vec<AtomicBool>> =
            Arc::new((0..SLOTS * 16).map(|_| AtomicBool::new(false)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|r| {
                let (tree, ever, stop) = (tree.clone(), ever.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(r);
                    let valid = |(k, v): (usize, usize)| {
                        assert!(ever[k].load(Ordering::Acquire), "never-inserted key {k}");
                        assert_eq!(k / 16, v >> 32, "value of another slot at {k}");
                    };
                    let mut lookups = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let g = epoch::pin();
                        for _ in 0..64 {
                            let k = rng.gen_range(0..SLOTS * 16 + 32);
                            if let Some(e) = tree.floor(k, &g) {
                                assert!(e.0 <= k);
                                valid(e);
                            }
                            if let Some(e) = tree.next_after(k, &g) {
                                assert!(e.0 > k);
                                valid(e);
                            }
                            if let Some(e) = tree.prev_before(k, &g) {
                                assert!(e.0 < k);
                                valid(e);
                            }
                        }
                        lookups += 1;
                        if lookups % 256 == 0 {
                            let mut last = None;
                            tree.for_each(&g, |k, v| {
                                assert!(last < Some(k));
                                last = Some(k);
                                valid((k, v));
                            });
                        }
                    }
                    lookups
                })
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut model: Vec<Option<usize>> = vec![None; SLOTS];
        for op in 0..300_000usize {
            let slot = rng.gen_range(0..SLOTS);
            let g = epoch::pin();
            let offset = rng.gen_range(0..16);
            let key = slot * 16 + offset;
            // SAFETY: this thread is the only writer.
            unsafe {
                match model[slot] {
                    None => {
                        ever[key].store(true, Ordering::Release);
                        tree.insert(key, slot << 32 | op, &g).unwrap();
                        model[slot] = Some(offset);
                    }
                    Some(old) => match op % 3 {
                        0 => {
                            assert!(tree.remove(slot * 16 + old, &g).is_some());
                            model[slot] = None;
                        }
                        1 => assert!(tree.replace(slot * 16 + old, slot << 32 | op, &g).is_some()),
                        _ => {
                            ever[key].store(true, Ordering::Release);
                            tree.rekey(slot * 16 + old, key, &g).unwrap();
                            model[slot] = Some(offset);
                        }
                    },
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        let want: Vec<usize> = model
            .iter()
            .enumerate()
            .filter_map(|(s, o)| o.map(|o| s * 16 + o))
            .collect();
        assert_eq!(
            entries(&tree).into_iter().map(|e| e.0).collect::<Vec<_>>(),
            want
        );
        check(&tree);
    }

    /// `cargo test --release -p rangealloc-core floor_latency -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn floor_latency() {
        const N: usize = 100_000;
        let tree = RangeTree::new();
        let mut rng = SmallRng::seed_from_u64(1);
        let g = epoch::pin();
        let mut keys = Vec::with_capacity(N);
        while keys.len() < N {
            let k = rng.gen_range(0..1usize << 47) & !0xfff;
            // SAFETY: single-threaded test: writers are serialised.
            if unsafe { tree.insert(k, k, &g) }.is_ok() {
                keys.push(k);
            }
        }
        let probes: Vec<usize> = (0..1 << 20)
            .map(|_| keys[rng.gen_range(0..N)] + rng.gen_range(0..4096))
            .collect();
        let mut sum = 0usize;
        let start = std::time::Instant::now();
        for _ in 0..4 {
            for &p in &probes {
                sum = sum.wrapping_add(tree.floor(core::hint::black_box(p), &g).map_or(0, |e| e.1));
            }
        }
        let floor_ns = start.elapsed().as_nanos() as f64 / (4 * probes.len()) as f64;
        let start = std::time::Instant::now();
        for &k in &keys[..20_000] {
            // SAFETY: as above.
            unsafe {
                tree.remove(k, &g);
                tree.insert(k, k, &g).unwrap();
            }
        }
        let write_ns = start.elapsed().as_nanos() as f64 / 40_000.0;
        println!(
            "fan-out {FANOUT} ({NODE_BYTES} B nodes), {N} entries, {} levels: floor {floor_ns:.1} ns, \
             insert/remove {write_ns:.0} ns (checksum {sum:x})",
            levels(&tree)
        );
    }
}
